"""What a repository's sandboxes run on: the host's tools, or the environment it declares.

`declared` folds a repository's `.devcontainer/devcontainer.json` into a spec that declares
no environment itself (neither stored nor in `.nightshift.toml`). `base_environment` is the
build's environment step: given the effective spec, it produces the base the image is built
on (None: the host's tools). Backends that can build a declared environment hook in here.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from images.devcontainer import DEVCONTAINER_FILE, Devcontainer
from images.sandboxes.base import SandboxBackend
from images.setup import BuildError
from images.spec import SPEC_FILE, RepoSpec, SpecFile


def declared(spec: RepoSpec, dev: Devcontainer | None) -> RepoSpec:
    """`spec` completed by the repository's devcontainer.json when it declares no environment
    itself: its image or Dockerfile, `containerEnv` under the spec's own env, and
    `postCreateCommand` as set-up steps before the spec's."""
    if dev is None or spec.image is not None or spec.dockerfile is not None:
        return spec
    if dev.image is None and dev.dockerfile is None:
        return spec.model_copy(
            update={"env": {**dev.env, **spec.env}, "setup": [*dev.setup, *spec.setup]}
        )
    return spec.model_copy(
        update={
            "image": dev.image,
            "dockerfile": dev.dockerfile,
            "context": dev.context,
            "env": {**dev.env, **spec.env},
            "setup": [*dev.setup, *spec.setup],
        }
    )


def recorded_files(file: SpecFile | None, dev: Devcontainer | None) -> dict[str, Any] | None:
    """What an image record keeps of the files that shaped it (its `file_spec` column): the
    `.nightshift.toml` fields, and the devcontainer.json under `devcontainer`."""
    if file is None and dev is None:
        return None
    out: dict[str, Any] = file.model_dump() if file is not None else {}
    if dev is not None:
        out["devcontainer"] = asdict(dev)
    return out


def effective_from_record(spec: RepoSpec, recorded: dict[str, Any] | None) -> RepoSpec:
    """`spec` as an image record's files complete it (see `recorded_files`)."""
    if recorded is None:
        return spec
    dev = recorded.get("devcontainer")
    file = SpecFile.model_validate({k: v for k, v in recorded.items() if k != "devcontainer"})
    return declared(spec.with_file(file), Devcontainer(**dev) if dev else None)


def origin_of_environment(spec: RepoSpec, file_declares: bool, dev: Devcontainer | None) -> str:
    """Where the effective environment came from: `stored`, the spec file, the devcontainer
    file, or `host` when nothing declares one."""
    if file_declares:
        return SPEC_FILE
    if spec.image is not None or spec.dockerfile is not None:
        return "stored"
    if dev is not None and (dev.image is not None or dev.dockerfile is not None):
        return DEVCONTAINER_FILE
    return "host"


def base_environment(spec: RepoSpec, backend: SandboxBackend) -> None:
    """The build's environment step: None when sandboxes run on the host's tools.

    A declared image or Dockerfile cannot be honoured by this build yet: the build fails with
    one line (the repository keeps its previous image) rather than running the repository's
    commands on the host's tools it did not ask for.
    """
    if spec.image is None and spec.dockerfile is None:
        return
    raise BuildError(
        f"the repository declares {spec.environment()}, and the {backend.name} backend "
        "cannot build declared environments on this server; remove it to use the host's tools"
    )


def uncommitted_spec_warning(spec: RepoSpec, committed: bool) -> str | None:
    """A warning when a local repository's working tree has a `.nightshift.toml` that its base
    branch does not: builds read the branch, so that file is ignored until it is committed."""
    if committed or spec.forge != "local":
        return None
    path = Path(spec.url) / SPEC_FILE
    if not path.is_file():
        return None
    return (
        f"warning: {path} is not committed on branch {spec.base!r}; builds read the branch, "
        "so its settings are ignored until you commit it"
    )
