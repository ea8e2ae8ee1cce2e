"""Sandbox benchmarks: start to first command, command round trip, snapshot and restore.

Every figure comes from the public interface (`start`, `exec`, `snapshot`, `start` from the
snapshot), on a scratch image in a scratch state directory that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from images.sandboxes.base import ImageRef, Limits, Sandbox, SandboxBackend, SandboxSpec
from images.sandboxes.overlay import chown_tree

TARGETS_MS = {
    "bwrap": {"start_to_first_exec_p50": 30.0, "snapshot_1MB": 50.0, "restore_1MB": 50.0},
    "gvisor": {"start_to_first_exec_p50": 300.0, "snapshot_1MB": 50.0, "restore_1MB": 50.0},
}
DIFF_SIZES = {"1MB": 1 << 20, "100MB": 100 << 20}


def scratch_image(root: Path, backend: str, owner: tuple[int, int] | None) -> ImageRef:
    """An image holding a small workspace (a README and a little git-like tree)."""
    image_dir = root / "images" / "bench"
    workspace = image_dir / "root" / "workspace"
    (image_dir / "root" / "home").mkdir(parents=True)
    (workspace / "src").mkdir(parents=True)
    (workspace / "README.md").write_text("# bench\n")
    for i in range(50):
        (workspace / "src" / f"module_{i}.py").write_text(f"VALUE = {i}\n" * 20)
    chown_tree(image_dir / "root", owner)
    return ImageRef(
        id="img-bench",
        repo="bench",
        sha="0" * 40,
        backend=backend,
        location=str(image_dir),
        runtime="",
        built_at=time.time(),
    )


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1)}


async def bench_backend(
    make: Callable[[Path], SandboxBackend],
    *,
    runs: int = 20,
    crowd: int = 0,
    snapshot_runs: int = 3,
    sizes: dict[str, int] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Measure one backend; `make(state_dir)` builds it on a scratch state directory."""
    sizes = sizes or DIFF_SIZES
    root = Path(tempfile.mkdtemp(prefix="nightshift-bench-"))
    os.chmod(root, 0o700)  # as the data dir is: sandboxes reach their files through mounts
    backend = make(root)
    image = scratch_image(root, backend.name, backend.owner)
    spec = SandboxSpec(image, Limits())
    try:
        warm = await backend.start(spec)  # first start builds helpers, probes cgroups
        await warm.exec(["true"])
        starts: list[float] = []
        for i in range(runs):
            progress(f"{backend.name}: start → first exec {i + 1}/{runs}")
            t0 = time.perf_counter()
            sandbox = await backend.start(spec)
            await sandbox.exec(["true"])
            starts.append((time.perf_counter() - t0) * 1000)
            await sandbox.terminate()
        trips = await _exec_trips(warm, runs, f"{backend.name}: exec round trip", progress)
        crowded = await _round_trips_among(backend, spec, warm, crowd, runs, progress)
        await warm.terminate()
        snapshot_ms: dict[str, float] = {}
        restore_ms: dict[str, float] = {}
        for label, size in sizes.items():
            snaps: list[float] = []
            restores: list[float] = []
            for i in range(snapshot_runs if size <= 8 << 20 else 1):
                progress(f"{backend.name}: snapshot and restore of a {label} diff ({i + 1})")
                sandbox = await backend.start(spec)
                made = await sandbox.exec(["sh", "-c", f"head -c {size} /dev/urandom > diff.bin"])
                if made.exit_code != 0:
                    raise RuntimeError(f"could not write the diff: {made.stderr}")
                t0 = time.perf_counter()
                ref = await sandbox.snapshot()
                snaps.append((time.perf_counter() - t0) * 1000)
                await sandbox.terminate()
                t0 = time.perf_counter()
                restored = await backend.start(SandboxSpec(ref, Limits()))
                check = await restored.exec(["stat", "-c", "%s", "diff.bin"])
                restores.append((time.perf_counter() - t0) * 1000)
                if check.stdout.strip() != str(size):
                    raise RuntimeError(f"restored diff has {check.stdout.strip()!r} bytes")
                await restored.terminate()
            snapshot_ms[label] = round(statistics.median(snaps), 1)
            restore_ms[label] = round(statistics.median(restores), 1)
        result: dict[str, Any] = {
            "backend": backend.name,
            "runtime": backend.runtime_version(),
            "runs": runs,
            "start_to_first_exec_ms": _percentiles(starts),
            "exec_round_trip_ms": _percentiles(trips),
            **crowded,
            "snapshot_ms": snapshot_ms,
            "restore_ms": restore_ms,
            "restore_means": "start from the snapshot until a first command has run",
        }
        targets = TARGETS_MS.get(backend.name)
        if targets:
            measured = {
                "start_to_first_exec_p50": result["start_to_first_exec_ms"]["p50"],
                "snapshot_1MB": snapshot_ms.get("1MB"),
                "restore_1MB": restore_ms.get("1MB"),
            }
            result["targets_ms"] = {
                name: {
                    "target": target,
                    "measured": measured[name],
                    "met": (measured[name] or 0) <= target,
                }
                for name, target in targets.items()
                if measured.get(name) is not None
            }
        return result
    finally:
        backend.collect_snapshots(0)
        shutil.rmtree(root, ignore_errors=True)


async def _exec_trips(
    sandbox: Sandbox, runs: int, label: str, progress: Callable[[str], None]
) -> list[float]:
    """Milliseconds of `runs` round trips of `true` in `sandbox`."""
    trips: list[float] = []
    for i in range(runs):
        progress(f"{label} {i + 1}/{runs}")
        t0 = time.perf_counter()
        await sandbox.exec(["true"])
        trips.append((time.perf_counter() - t0) * 1000)
    return trips


async def _round_trips_among(
    backend: SandboxBackend,
    spec: SandboxSpec,
    warm: Any,
    crowd: int,
    runs: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The round trip again with `crowd` other sandboxes alive: what a command costs on a
    busy host, where each live sandbox adds its mounts to the host's table. Also each of
    them's first and second command (the second starts in the sandbox's own namespace)."""
    if crowd <= 0:
        return {}
    others: list[Any] = []
    try:
        for i in range(crowd):
            progress(f"{backend.name}: starting {i + 1}/{crowd} other sandboxes")
            others.append(await backend.start(spec))
        firsts: list[float] = []
        seconds: list[float] = []
        for i, other in enumerate(others[:runs]):
            progress(f"{backend.name}: first and second command {i + 1}/{min(runs, crowd)}")
            for samples in (firsts, seconds):
                t0 = time.perf_counter()
                await other.exec(["true"])
                samples.append((time.perf_counter() - t0) * 1000)
        trips = await _exec_trips(
            warm, runs, f"{backend.name}: exec round trip among {crowd}", progress
        )
    finally:
        for other in others:
            await other.terminate()
    return {
        "crowd": crowd,
        "exec_round_trip_among_crowd_ms": _percentiles(trips),
        "first_exec_among_crowd_ms": _percentiles(firsts),
        "second_exec_among_crowd_ms": _percentiles(seconds),
    }


def host_facts() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load_avg_1m": round(load[0], 2),
        "load_avg_5m": round(load[1], 2),
    }
