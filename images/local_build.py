"""Image builds on a local backend (bubblewrap, gVisor).

The set-up and warm commands run in a build sandbox started from the staged image directory
(the clone, on the declared environment's root when there is one); what they wrote, the
sandbox's overlay upper directory, is folded into the image, which every sandbox of the repo
then starts from read-only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from images.layers import fold_snapshot
from images.registry import ImageRecord
from images.sandboxes.base import ImageRef, Limits, SandboxBackend, SandboxSpec
from images.setup import BuildLog, Progress, exclude_setup_output, run_commands
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
    sandbox = await backend.start(
        SandboxSpec(
            source=source,
            limits=replace(limits, exec_timeout_s=command_timeout),
            env=spec.env,
            egress=spec.egress,
            label=f"build:{spec.name}",
        )
    )
    try:
        await run_commands(sandbox, spec, ("setup", "warm"), command_timeout, build_log, say)
        excluded = await exclude_setup_output(sandbox)
        if excluded:
            build_log.line(f"kept out of commits (.git/info/exclude): {', '.join(excluded)}")
        snapshot = await sandbox.snapshot()
    finally:
        await sandbox.terminate()
    await asyncio.to_thread(fold_snapshot, snapshot, staging / "root")
