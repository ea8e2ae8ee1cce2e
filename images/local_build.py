"""Image builds on a local backend (bubblewrap, gVisor).

The set-up and warm commands run in a build sandbox started from the staged image directory
(the clone, on the declared environment's root when there is one); what they wrote, the
sandbox's overlay upper directory, is folded into the image, which every sandbox of the repo
then starts from read-only.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from images.layers import fold_snapshot
from images.registry import ImageRecord
from images.sandboxes.base import ImageRef, Limits, SandboxBackend
from images.setup import BuildLog, Progress, build_sandbox_spec, run_setup
from images.spec import RepoSpec


async def build_local(
    backend: SandboxBackend,
    record: ImageRecord,
    spec: RepoSpec,
    staging: Path,
    limits: Limits,
    command_timeout: float,
    build_log: BuildLog,
    say: Progress,
) -> None:
    """Run `spec`'s set-up and warm commands on the image staged in `staging` and keep what
    they wrote there. `spec` is the effective spec."""
    source = ImageRef(
        id=record.id,
        repo=spec.name,
        sha=record.sha or "",
        backend=backend.name,
        location=str(staging),
        runtime=backend.runtime_version(),
        built_at=time.time(),
        spec_hash=record.spec_hash or "",
    )
    say("starting the build sandbox")
    sandbox = await backend.start(build_sandbox_spec(spec, source, limits, command_timeout))
    try:
        await run_setup(sandbox, spec, command_timeout, build_log, say)
        snapshot = await sandbox.snapshot()
    finally:
        await sandbox.terminate()
    await asyncio.to_thread(fold_snapshot, snapshot, staging / "root")
