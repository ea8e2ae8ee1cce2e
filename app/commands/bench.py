"""`nightshift bench ...`: benchmarks that print JSON (progress goes to stderr)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from images.sandboxes.base import SANDBOX_PATH

bench_app = typer.Typer(help="Benchmarks: each prints its figures as JSON.", no_args_is_help=True)

SPEC_TOML = """\
# Image spec of the benchmark project (read by Nightshift from the base branch).
setup = [
  "python3 -m venv .venv",
  ".venv/bin/pip install --quiet --no-index --find-links vendor/wheels tinydep",
]
warm = [".venv/bin/python -m unittest discover -s tests -q"]

[env]
PIP_DISABLE_PIP_VERSION_CHECK = "1"
"""
TEST_FILE = """\
import unittest

import tinydep
from benchproj.pkg000 import mod_00000


class CoreTest(unittest.TestCase):
    def test_dependency(self):
        self.assertEqual(tinydep.double(21), 42)

    def test_module(self):
        self.assertEqual(mod_00000.value(), 0)


if __name__ == "__main__":
    unittest.main()
"""
MODES = ("cold", "image", "warm")


def percentile(samples: list[int], p: float) -> int | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(samples: list[int]) -> dict[str, Any]:
    return {"p50": percentile(samples, 50), "p95": percentile(samples, 95), "samples": samples}


def _wheel(dest: Path) -> None:
    """A tiny pure-Python wheel, so the set-up installs a real dependency offline."""
    files = {
        "tinydep/__init__.py": "def double(x):\n    return 2 * x\n",
        "tinydep-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        "tinydep-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: nightshift-bench\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinydep-1.0.dist-info/RECORD,,")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("tinydep-1.0.dist-info/RECORD", "\n".join(record) + "\n")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def make_project(root: Path, files: int) -> Path:
    """A small Python project: `files` tracked files, a dependency, a test suite, a spec."""
    repo = root / "benchproj"
    (repo / "tests").mkdir(parents=True)
    (repo / "README.md").write_text("# benchproj\n\nA generated project for Nightshift benches.\n")
    (repo / ".gitignore").write_text(".venv/\n__pycache__/\n*.pyc\n")
    (repo / ".nightshift.toml").write_text(SPEC_TOML)
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_core.py").write_text(TEST_FILE)
    (repo / "benchproj").mkdir()
    (repo / "benchproj" / "__init__.py").write_text('"""Generated."""\n')
    _wheel(repo / "vendor" / "wheels" / "tinydep-1.0-py3-none-any.whl")
    made = 9
    index = 0
    while made < files:
        pkg = repo / "benchproj" / f"pkg{index // 100:03d}"
        if not pkg.exists():
            pkg.mkdir()
            (pkg / "__init__.py").write_text("")
            made += 1
        (pkg / f"mod_{index:05d}.py").write_text(
            f'"""Module {index}."""\n\n\ndef value() -> int:\n    return {index}\n'
        )
        made += 1
        index += 1
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    _git(repo, "add", "-A")
    _git(
        repo,
        "-c",
        "user.name=Bench",
        "-c",
        "user.email=bench@example.com",
        "commit",
        "-qm",
        "generated project",
    )
    _git(repo, "gc", "--quiet")  # packed, like any repository that has lived a while
    return repo


def baseline_ms(repo: Path, scratch: Path, setup: list[str]) -> dict[str, int]:
    """A plain `git clone` plus the set-up commands on the host: what cold must not exceed."""
    dest = scratch / "baseline-clone"
    started = time.monotonic()
    # --no-hardlinks: a copy, as any clone from a git host is (and as the local forge clones).
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(dest)], check=True)
    cloned = time.monotonic()
    env = {"PATH": SANDBOX_PATH, "HOME": str(scratch), "LANG": "C.UTF-8"}  # the sandbox's PATH
    for command in setup:
        subprocess.run(["bash", "-c", command], cwd=dest, env=env, check=True, capture_output=True)
    done = time.monotonic()
    shutil.rmtree(dest, ignore_errors=True)
    return {
        "git_clone": int((cloned - started) * 1000),
        "setup": int((done - cloned) * 1000),
        "total": int((done - started) * 1000),
    }


@contextmanager
def _scratch(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nightshift-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@bench_app.command("startup")
def bench_startup(
    sessions: Annotated[int, typer.Option(min=1, help="Sessions per mode")] = 5,
    files: Annotated[int, typer.Option(min=20, help="Tracked files in the generated repo")] = 5000,
    latency_ms: Annotated[int, typer.Option(min=0, help="Fake model latency per turn")] = 0,
    modes: Annotated[
        str, typer.Option(help="Comma-separated: cold,image,warm")
    ] = "cold,image,warm",
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory (printed)")] = False,
) -> None:
    """Prompt → first model request, per start mode (cold, image, warm), as JSON.

    Generates a Python project (virtualenv, an offline dependency, a unittest suite, a
    `.nightshift.toml`), registers it in a scratch data dir, and runs SESSIONS sessions per
    mode against the built-in scripted model. Also times a plain `git clone` plus the set-up
    commands, the bar a cold start must not exceed.
    """
    from rich.console import Console

    from app.cli import fail

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODES]
    if unknown or not wanted:
        fail(f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}")
    err = Console(stderr=True)
    with _scratch(keep) as scratch:
        if keep:
            err.print(f"scratch directory: {scratch}")
        with err.status("generating the project…"):
            repo = make_project(scratch / "src", files)
        from images.spec import parse_spec_file

        spec_file = parse_spec_file(SPEC_TOML)
        setup = spec_file.setup or []
        with err.status("timing a plain git clone plus the set-up…"):
            baseline = baseline_ms(repo, scratch, setup)
        result = _run_modes(scratch, repo, wanted, sessions, latency_ms, err)
        cold = result["modes"].get("cold", {}).get("first_model_request_ms", {})
        image = result["modes"].get("image", {}).get("first_model_request_ms", {})
        warm = result["modes"].get("warm", {}).get("first_model_request_ms", {})
        report = {
            "benchmark": "startup",
            "repo": {"tracked_files": files, "setup": setup, "warm": spec_file.warm or []},
            "sessions_per_mode": sessions,
            "model": result["model"],
            "baseline_ms": baseline,
            **{k: v for k, v in result.items() if k != "model"},
            "targets": {
                "warm_p50_ms": 100,
                "image_p50_ms": 400,
                "cold_p50_max_ms": baseline["total"],
            },
            "met": {
                mode: (p50 <= bar if (p50 := figures.get("p50")) is not None else None)
                for mode, figures, bar in (
                    ("warm", warm, 100),
                    ("image", image, 400),
                    ("cold", cold, baseline["total"]),
                )
            },
        }
        print(json.dumps(report, indent=2))


def _run_modes(
    scratch: Path, repo: Path, modes: list[str], sessions: int, latency_ms: int, err: Any
) -> dict[str, Any]:
    from app.cli import fail
    from app.runtime import build_runtime
    from app.schemas import RepoCreate
    from app.settings import Settings
    from images.jobs import build_images

    script = scratch / "script.json"
    script.write_text(json.dumps({"turns": [{"text": "Nothing to change."}]}))
    model = f"scripted:{script}?latency_ms={latency_ms}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=scratch / "data",
        model=model,
        image_interval=0,
        idle_seconds=0,
        auth="token",
    )
    runtime = build_runtime(settings)
    try:
        user = runtime.users.upsert("bench", "Bench Runner", "bench@example.com")
        name = runtime.repos.add(RepoCreate(url=str(repo), name="benchproj")).name
        runtime.start()
        out: dict[str, Any] = {"model": model, "modes": {}}
        for mode in modes:
            if mode in ("image", "warm") and "image_build_ms" not in out:
                with err.status("building the image…"):
                    built = runtime.executor.submit(
                        lambda: build_images(runtime.image_jobs, [name], trigger="manual")
                    ).result()
                if built[0].outcome not in ("built", "skipped"):
                    fail(f"the image build failed: {built[0].message}")
                out["image_build_ms"] = built[0].ms
                again = runtime.executor.submit(
                    lambda: build_images(runtime.image_jobs, [name], trigger="manual")
                ).result()
                out["unchanged_skip_ms"] = again[0].ms  # what every scheduled check costs
            samples: dict[str, list[int]] = {"first": [], "ready": [], "sync": []}
            lock = runtime.images if mode == "cold" else None
            if lock is not None:
                # Hold the build lock so the build each cold start queues stays out of the way.
                lock.acquire_lock(name, "bench", 3600)
            try:
                for run in range(sessions):
                    err.print(f"[dim]{mode} {run + 1}/{sessions}[/]")
                    if mode == "warm":
                        _warm_up(runtime, user, name)
                    first, ready, sync, seen = _one_session(runtime, user, name, f"{mode} {run}")
                    if seen != mode:
                        fail(f"a {mode} run started its sandbox from {seen}")
                    samples["first"].append(first)
                    samples["ready"].append(ready)
                    if sync is not None:
                        samples["sync"].append(sync)
            finally:
                if lock is not None:
                    lock.release_lock(name, "bench")
            out["modes"][mode] = {
                "first_model_request_ms": summary(samples["first"]),
                "sandbox_ready_ms": summary(samples["ready"]),
                "sync_ms": summary(samples["sync"]),
            }
        return out
    finally:
        runtime.close()


def _warm_up(runtime: Any, user: Any, repo: str, timeout: float = 300.0) -> None:
    from app.cli import fail

    deadline = time.monotonic() + timeout
    state = runtime.image_service.warm(user, repo)
    while state.state != "warm":
        if state.state == "failed" or time.monotonic() > deadline:
            fail(f"warming a sandbox failed: {state.error or 'timed out'}")
        time.sleep(0.02)
        state = runtime.image_service.warm_state(user, repo)
    time.sleep(0.2)  # let the pool settle, as when a person is still typing


def _one_session(
    runtime: Any, user: Any, repo: str, prompt: str, timeout: float = 600.0
) -> tuple[int, int, int | None, str]:
    """Run one session; (prompt → first model request, → sandbox ready, sync ms, mode)."""
    from app.cli import fail

    session = runtime.sessions.create(user, repo, prompt, source="cli")
    deadline = time.monotonic() + timeout
    while runtime.sessions.get(session.id).status not in ("finished", "failed", "stopped"):
        if time.monotonic() > deadline:
            fail(f"session {session.id} did not finish in {timeout:.0f}s")
        time.sleep(0.02)
    while session.id in getattr(runtime.dispatcher, "runners", {}):
        time.sleep(0.01)  # the runner is still releasing its sandbox
    events = runtime.sessions.events(session.id, 0, 10_000)
    first = next((e for e in events if e.type == "model_request" and e.step == 1), None)
    ready = next((e for e in events if e.type == "sandbox_ready"), None)
    sync = next((e for e in events if e.type == "sync_done"), None)
    if first is None or ready is None:
        errors = "; ".join(e.message for e in events if e.type == "error") or "no model request"
        fail(f"session {session.id} did not reach the model: {errors}")
    return first.ms_since_prompt, ready.ms_since_prompt, sync.ms if sync else None, ready.mode


@bench_app.command("load")
def bench_load(
    sessions: Annotated[int, typer.Option(help="Concurrent sessions", min=1)] = 200,
    latency_ms: Annotated[
        int, typer.Option("--latency-ms", help="Fake model latency per turn", min=0)
    ] = 1000,
    mode: Annotated[
        str, typer.Option(help="embedded (in-process), distributed (Celery on Redis) or both")
    ] = "embedded",
    workers: Annotated[int, typer.Option(help="Celery worker processes (distributed)", min=1)] = 2,
    worker_concurrency: Annotated[
        int | None, typer.Option(help="Sessions per worker (default: enough for all)", min=1)
    ] = None,
    idle_seconds: Annotated[
        float, typer.Option(help="How long finished sessions stay idle (memory is measured then)")
    ] = 60.0,
    database_url: Annotated[
        str | None, typer.Option(help="Control DB URL (default: SQLite in the scratch dir)")
    ] = None,
    broker_url: Annotated[
        str | None, typer.Option(help="Redis URL (default: a private redis-server)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the sessions")] = 600.0,
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory and logs")] = False,
) -> None:
    """N concurrent sessions against a fake model: sessions completed, API p99 latency,
    event delivery lag p99 and memory per idle session, as JSON.

    The server (and in distributed mode Redis and the Celery workers) run as their own
    processes from a scratch directory; this process only plays the clients.
    """
    from rich.console import Console

    from app.cli import fail
    from app.loadbench import LoadConfig, Mode, run_load

    choices: dict[str, list[Mode]] = {
        "embedded": ["embedded"],
        "distributed": ["distributed"],
        "both": ["embedded", "distributed"],
    }
    if mode not in choices:
        fail(f"unknown mode {mode!r}; choose embedded, distributed or both")
    err = Console(stderr=True)
    results = []
    for one in choices[mode]:
        config = LoadConfig(
            sessions=sessions,
            latency_ms=latency_ms,
            mode=one,
            workers=workers,
            worker_concurrency=worker_concurrency,
            idle_seconds=idle_seconds,
            database_url=database_url,
            broker_url=broker_url,
            timeout_s=timeout,
            keep=keep,
            progress=lambda msg: err.print(f"[dim]· {msg}[/]", highlight=False),
        )
        try:
            results.append(run_load(config))
        except Exception as exc:
            fail(f"the {one} load benchmark failed: {type(exc).__name__}: {exc}", 1)
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


# ---------------------------------------------------------------- sandboxes

LOCAL_BACKENDS = ("bwrap", "gvisor")


@bench_app.command("sandbox")
def bench_sandbox(
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="Backend to measure (repeatable; default: bwrap and gvisor, plus modal when "
            "MODAL_TOKEN_ID is set)"
        ),
    ] = None,
    runs: Annotated[int, typer.Option(min=3, help="Samples for start and round-trip figures")] = 20,
    big: Annotated[bool, typer.Option(help="Also measure the 100 MB diff")] = True,
) -> None:
    """Start → first exec (p50/p95), exec round trip, snapshot and restore of a 1 MB and a
    100 MB diff, per backend, as JSON. A backend that cannot run here reports its error."""
    import asyncio

    from rich.console import Console

    from app.cli import fail, load_settings
    from images.sandboxes import BACKENDS, make_backend
    from images.sandboxes.base import SandboxError
    from images.sandboxes.bench import DIFF_SIZES, bench_backend, host_facts

    settings = load_settings()
    names = backend or [*LOCAL_BACKENDS, *(["modal"] if settings.modal_token_id else [])]
    for name in names:
        if name not in BACKENDS or name == "fake":
            fail(f"cannot benchmark {name!r}; choose from bwrap, gvisor, modal")
    sizes = DIFF_SIZES if big else {"1MB": DIFF_SIZES["1MB"]}
    config = settings.sandbox_config()
    results: list[dict[str, Any]] = []
    err = Console(stderr=True)
    with err.status("benchmarking…") as status:
        for name in names:

            def make(state_dir: Path, name: str = name) -> Any:
                return make_backend(name, state_dir, config)

            try:
                results.append(
                    asyncio.run(
                        bench_backend(
                            make, runs=runs, sizes=sizes, progress=lambda m: status.update(m)
                        )
                    )
                )
            except (SandboxError, RuntimeError, OSError) as exc:
                results.append({"backend": name, "error": str(exc)})
    print(json.dumps({"benchmark": "sandbox", "host": host_facts(), "results": results}, indent=2))
