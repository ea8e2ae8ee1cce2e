"""What a repository's sandboxes run on: the host's tools, or the environment it declares.

`declared` folds a repository's `.devcontainer/devcontainer.json` into a spec that declares
no environment itself (neither stored nor in `.nightshift.toml`). `base_environment` is the
build's environment step: given the effective spec, it produces the base the image is built
on (None: the host's tools). Backends that can build a declared environment hook in here.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from images.devcontainer import DEVCONTAINER_FILE, Devcontainer
from images.sandboxes.base import SandboxBackend
from images.setup import BuildError
from images.spec import SPEC_FILE, RepoSpec, SpecFile


def declared(spec: RepoSpec, dev: Devcontainer | None) -> RepoSpec:
    """`spec` completed by the repository's devcontainer.json when it declares no environment
    itself: `containerEnv` under the spec's own env, and the lifecycle commands as set-up
    steps before the spec's.

    A devcontainer.json that names an image or a Dockerfile is set aside whole (see
    `devcontainer_note`): its commands were written for that image, and this server does not
    build declared environments yet, so the repository keeps running on the host's tools as
    it did before it had the file. An environment declared on purpose (stored, or in
    `.nightshift.toml`) is not set aside: its build fails instead (`base_environment`).
    """
    if dev is None or spec.image is not None or spec.dockerfile is not None:
        return spec
    if dev.image is not None or dev.dockerfile is not None:
        return spec
    return spec.model_copy(
        update={"env": {**dev.env, **spec.env}, "setup": [*dev.setup, *spec.setup]}
    )


def devcontainer_note(spec: RepoSpec, dev: Devcontainer | None) -> str | None:
    """A build-log line when `declared` set a devcontainer.json aside."""
    if dev is None or spec.image is not None or spec.dockerfile is not None:
        return None
    if dev.image is None and dev.dockerfile is None:
        return None
    what = f"image {dev.image}" if dev.image is not None else f"dockerfile {dev.dockerfile}"
    if dev.features:
        what += f" with features {', '.join(dev.features)}"
    return (
        f"note: {DEVCONTAINER_FILE} declares {what}; this server does not build declared "
        "environments yet, so the file is set aside and sandboxes run the host's tools"
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


def origin_of_environment(spec: RepoSpec, file_declares: bool) -> str:
    """Where the effective environment came from: `stored`, the spec file, or `host` when
    nothing (that this server honours) declares one."""
    if file_declares:
        return SPEC_FILE
    if spec.image is not None or spec.dockerfile is not None:
        return "stored"
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
        listed = subprocess.run(
            ["git", "-C", spec.url, "ls-tree", "--name-only", spec.base, "--", SPEC_FILE],
            capture_output=True,
            text=True,
            check=False,
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
