"""What a repository's sandboxes run on: the host's tools, or the environment it declares.

`declared` folds a repository's `.devcontainer/devcontainer.json` into a spec that declares
no environment itself (neither stored nor in `.nightshift.toml`). `base_environment` is the
build's environment step: given the effective spec, it pulls the declared image or builds the
declared Dockerfile (`images.oci_store`), and records the unpacked root beside the image
(`environment.json`), where the local backends find it (None: the host's tools).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from images.devcontainer import DEVCONTAINER_FILE, Devcontainer, read_devcontainer
from images.oci_store import OciStore
from images.sandboxes.base import SandboxBackend
from images.sandboxes.environment import ENVIRONMENT_FILE, ImageEnvironment
from images.setup import BuildError, BuildLog
from images.spec import SPEC_FILE, RepoSpec, SpecFile
from integrations.forge.base import git_env


def devcontainer_of(spec: RepoSpec, workspace: Path) -> Devcontainer | None:
    """The clone's devcontainer.json, unless the spec opted out (`devcontainer = false`): then
    the file is not even read, so one this server cannot use stands in nobody's way."""
    return read_devcontainer(workspace) if spec.devcontainer else None


def declared(spec: RepoSpec, dev: Devcontainer | None) -> RepoSpec:
    """`spec` completed by the repository's devcontainer.json when it declares no environment
    itself: the file's image or Dockerfile, `containerEnv` under the spec's own env, and the
    lifecycle commands as set-up steps before the spec's. An environment declared on purpose
    (stored, or in `.nightshift.toml`) wins over the file whole: its commands were written
    for another environment. A spec with `devcontainer = false` never reads the file."""
    if dev is None or not spec.devcontainer or spec.image is not None or spec.dockerfile:
        return spec
    update: dict[str, Any] = {"env": {**dev.env, **spec.env}, "setup": [*dev.setup, *spec.setup]}
    if dev.image is not None or dev.dockerfile is not None:
        update.update(image=dev.image, dockerfile=dev.dockerfile, context=dev.context)
    return spec.model_copy(update=update)


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


def origin_of_environment(spec: RepoSpec, file_declares: bool) -> str:
    """Where the effective environment came from: `stored`, the spec file, or `host` when
    nothing (that this server honours) declares one."""
    if file_declares:
        return SPEC_FILE
    if spec.image is not None or spec.dockerfile is not None:
        return "stored"
    return "host"


LOCAL_BACKENDS = ("bwrap", "gvisor")


def base_environment(
    spec: RepoSpec,
    backend: SandboxBackend,
    store: OciStore | None,
    image_dir: Path,
    build_log: BuildLog | None = None,
) -> ImageEnvironment | None:
    """The build's environment step: None when sandboxes run on the host's tools; else the
    declared image pulled (or Dockerfile built) and unpacked, recorded in `image_dir`.

    A backend that cannot run a declared environment fails the build with one line (the
    repository keeps its previous image) rather than running the repository's commands on
    the host's tools it did not ask for.
    """
    if build_log is not None:
        build_log.line(f"environment: {spec.environment()}")
    if spec.image is None and spec.dockerfile is None:
        return None
    if backend.name not in LOCAL_BACKENDS or store is None:
        raise BuildError(
            f"the repository declares {spec.environment()}, and the {backend.name} backend "
            "cannot build declared environments on this server; remove it to use the host's tools"
        )
    if spec.image is not None:
        environment = store.pull(spec.image)
    else:
        assert spec.dockerfile is not None
        workspace = image_dir / "root" / "workspace"
        environment = store.build(workspace, spec.dockerfile, spec.context or ".")
    (image_dir / ENVIRONMENT_FILE).write_text(json.dumps(asdict(environment)))
    if build_log is not None:
        build_log.line(f"environment digest: {environment.digest}")
    return environment


def environment_digest(
    spec: RepoSpec, backend: SandboxBackend, store: OciStore | None
) -> str | None:
    """The digest a declared image's reference names now (None: no image declared, or none
    this backend pulls): what decides whether a scheduled rebuild must pull."""
    if spec.image is None or store is None or backend.name not in LOCAL_BACKENDS:
        return None
    return store.resolve(spec.image)[1]


def uncommitted_spec_warning(spec: RepoSpec, committed: bool | None = None) -> str | None:
    """A warning when a local repository's working tree has a `.nightshift.toml` that its base
    branch does not: builds read the branch, so that file is ignored until it is committed.
    `committed` is asked of the repository's git when the caller does not know it."""
    if spec.forge != "local":
        return None
    path = Path(spec.url) / SPEC_FILE
    if not path.is_file():
        return None
    if committed is None:
        listed = subprocess.run(  # asked for API callers too: no system or user git config
            ["git", "-C", spec.url, "ls-tree", "--name-only", spec.base, "--", SPEC_FILE],
            capture_output=True,
            text=True,
            check=False,
            env=git_env(),
        )
        committed = listed.returncode == 0 and bool(listed.stdout.strip())
    if committed:
        return None
    return (
        f"warning: {path} is not committed on branch {spec.base!r}; builds read the branch, "
        "so its settings are ignored until you commit it"
    )


def effective_origins(
    spec: RepoSpec, recorded: dict[str, Any] | None
) -> list[tuple[str, Any, str]]:
    """Each field of the effective spec as `(field, value, origin)`; origins are `stored`,
    `.nightshift.toml`, devcontainer.json, `host` (no environment declared) or a `+` of them
    (env entries and set-up steps that several places contributed)."""
    recorded = recorded or {}
    dev_data = recorded.get("devcontainer")
    dev = Devcontainer(**dev_data) if dev_data else None
    file = SpecFile.model_validate({k: v for k, v in recorded.items() if k != "devcontainer"})
    with_file = spec.with_file(file)
    effective = declared(with_file, dev)
    dev_applies = effective is not with_file and dev is not None
    out: list[tuple[str, Any, str]] = []
    for name in ("setup", "warm", "egress"):
        origins = [SPEC_FILE if getattr(file, name) is not None else "stored"]
        if name == "setup" and dev_applies and dev is not None and dev.setup:
            origins.insert(0, DEVCONTAINER_FILE)
        out.append((name, getattr(effective, name), " + ".join(origins)))
    for key, value in sorted(effective.env.items()):
        if file.env is not None and key in file.env:
            origin = SPEC_FILE
        elif key in spec.env:
            origin = "stored"
        else:
            origin = DEVCONTAINER_FILE
        out.append((f"env.{key}", value, origin))
    file_declares = file.image is not None or file.dockerfile is not None
    origin = origin_of_environment(spec, file_declares)
    if dev_applies and dev is not None and (dev.image or dev.dockerfile):
        origin = DEVCONTAINER_FILE
    out.append(("environment", effective.environment(), origin))
    for name in ("image", "dockerfile", "context"):
        if getattr(effective, name) is not None:
            out.append((name, getattr(effective, name), origin))
    return out


_STEP_RE = re.compile(r"^→ exit (-?\d+)(?: \(wall-clock timeout\))? in (\d+) ms$")


def build_steps(log: str | None) -> list[tuple[str, int, int]]:
    """The commands a build log ran, as `(command, exit code, milliseconds)`."""
    steps: list[tuple[str, int, int]] = []
    command: str | None = None
    for line in (log or "").splitlines():
        if line.startswith("$ "):
            command = line[2:]
            continue
        done = _STEP_RE.match(line)
        if done and command is not None:
            steps.append((command, int(done.group(1)), int(done.group(2))))
            command = None
    return steps
