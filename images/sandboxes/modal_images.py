"""Modal images: the environment a repository declares, as a `modal.Image` definition.

A declared `image` is `Image.from_registry(ref)`, a `dockerfile` is `Image.from_dockerfile`
with its context inside the clone; with neither, the operator's `NIGHTSHIFT_MODAL_BASE_IMAGE`
(a registry reference) or Modal's `debian_slim`. On each the backend's own needs are made
sure of (git, `setpriv`/`prlimit` from util-linux, an `agent` user with uid 1000; installed
with apt only when missing), then the clone is copied to /workspace and given to the agent.

The clone is repository content, so nothing in it may reach past it: a Dockerfile or context
that resolves outside the clone is refused, and symlinks that point outside it are left out
of what is uploaded (Modal's upload follows links, which would copy host files).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from images.sandboxes.base import HOME, WORKDIR, SandboxError
from images.sandboxes.modal_sandbox import AGENT_UID

if TYPE_CHECKING:
    from images.spec import RepoSpec

TOOLS = ("git", "ca-certificates", "util-linux")
ENSURE_TOOLS = (
    "command -v git >/dev/null && command -v setpriv >/dev/null && command -v prlimit >/dev/null"
    " || (apt-get update -q && apt-get install -y -q --no-install-recommends "
    + " ".join(TOOLS)
    + ")"
)
ENSURE_AGENT = f"id -u agent >/dev/null 2>&1 || useradd --uid {AGENT_UID} --create-home --home-dir {HOME} agent"


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _outside_link(workspace: Path) -> Any:
    """An `ignore` predicate: True for a symlink whose target is outside `workspace`."""
    root = workspace.resolve()

    def ignore(path: Path) -> bool:
        full = path if path.is_absolute() else workspace / path
        return full.is_symlink() and not full.resolve().is_relative_to(root)

    return ignore


def environment_image(modal: Any, spec: RepoSpec, workspace: Path, base_image: str) -> Any:
    """The Modal image definition a build of `spec` starts from (built by Modal on first use)."""
    image: Any
    if spec.image is not None:
        image = modal.Image.from_registry(spec.image).run_commands(ENSURE_TOOLS, ENSURE_AGENT)
    elif spec.dockerfile is not None:
        dockerfile = workspace / spec.dockerfile
        context = workspace / spec.context if spec.context is not None else dockerfile.parent
        for what, path in (("dockerfile", dockerfile), ("context", context)):
            if not inside(path, workspace):
                raise SandboxError(f"the {what} {path.name} resolves outside the repository")
        if not dockerfile.is_file():
            raise SandboxError(f"the repository has no dockerfile {spec.dockerfile}")
        image = modal.Image.from_dockerfile(
            dockerfile, context_dir=context, ignore=_outside_link(workspace)
        ).run_commands(ENSURE_TOOLS, ENSURE_AGENT)
    else:
        image = default_base(modal, base_image)
    return with_workspace(image, workspace)


def default_base(modal: Any, base_image: str) -> Any:
    """What repos without a declared environment run on: the operator's image or debian_slim."""
    if base_image:
        return modal.Image.from_registry(base_image).run_commands(ENSURE_TOOLS, ENSURE_AGENT)
    return modal.Image.debian_slim().apt_install(*TOOLS).run_commands(ENSURE_AGENT)


def with_workspace(image: Any, workspace: Path) -> Any:
    """`image` with the clone at /workspace, owned by the agent."""
    if not workspace.is_dir():
        raise SandboxError(f"no workspace at {workspace}")
    return image.add_local_dir(
        workspace, WORKDIR, copy=True, ignore=_outside_link(workspace)
    ).run_commands(f"chown -R {AGENT_UID}:{AGENT_UID} {WORKDIR} {HOME}")
