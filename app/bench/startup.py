"""`nightshift bench startup`: prompt → first model request, per sandbox start mode.

A generated Python project (virtualenv, an offline dependency, a unittest suite, a
`.nightshift.toml`) is registered in a scratch data dir and sessions run against the built-in
scripted model; a plain `git clone` plus the set-up commands is the bar a cold start must meet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

from app.bench import BenchError
from app.bench.stats import samples_summary
from images.sandboxes.base import SANDBOX_PATH

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
IMAGE_P50_MS = 400
IMAGE_ENV_P50_MS = 150
"""Prompt → first model request from an image on a declared environment (`--image`)."""
SERVER_TARGETS_MS = {"warm": 60, "image": 80}
"""Prompt → first request at an HTTP model server (`--model-server`), p50."""
NO_PYTHON_SPEC = """\
# Image spec of the benchmark project on an image without python3: no set-up to run.
[env]
PIP_DISABLE_PIP_VERSION_CHECK = "1"
"""


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


def run_startup(
    scratch: Path,
    files: int,
    modes: list[str],
    sessions: int,
    latency_ms: int,
    err: Any,
    image: str | None = None,
    model_server: bool = False,
) -> dict[str, Any]:
    """Generate the project, time the baseline and every mode; the report printed as JSON."""
    with err.status("generating the project…"):
        repo = make_project(scratch / "src", files)
    from images.spec_file import parse_spec_file

    spec_file = parse_spec_file(SPEC_TOML)
    setup = spec_file.setup or []
    with err.status("timing a plain git clone plus the set-up…"):
        baseline = baseline_ms(repo, scratch, setup)
    if model_server:
        from app.bench.model_server import ModelServer

        with ModelServer() as server:
            result = _run_modes(scratch, repo, modes, sessions, latency_ms, err, image, server)
    else:
        result = _run_modes(scratch, repo, modes, sessions, latency_ms, err, image)
    # From a declared image the start also stacks its root: a tighter bar than a plain image's
    # first request, as nothing but the sandbox's start and the sync differ.
    image_bar = IMAGE_ENV_P50_MS if image is not None else IMAGE_P50_MS
    cold = result["modes"].get("cold", {}).get("first_model_request_ms", {})
    from_image = result["modes"].get("image", {}).get("first_model_request_ms", {})
    warm = result["modes"].get("warm", {}).get("first_model_request_ms", {})
    at_server = {
        mode: result["modes"][mode]["first_request_at_server_ms"]
        for mode in result["modes"]
        if "first_request_at_server_ms" in result["modes"][mode]
    }
    server_report = {
        "model_server": {
            "targets_p50_ms": SERVER_TARGETS_MS,
            "met": {
                mode: figures.get("p50") is not None and figures["p50"] <= bar
                for mode, bar in SERVER_TARGETS_MS.items()
                if (figures := at_server.get(mode)) is not None
            },
        }
    }
    return {
        "benchmark": "startup",
        "repo": {"tracked_files": files, "setup": setup, "warm": spec_file.warm or []},
        "sessions_per_mode": sessions,
        "model": result["model"],
        "baseline_ms": baseline,
        **{k: v for k, v in result.items() if k != "model"},
        "targets": {
            "warm_p50_ms": 100,
            "image_p50_ms": image_bar,
            "cold_p50_max_ms": baseline["total"],
        },
        "met": {
            mode: (p50 <= bar if (p50 := figures.get("p50")) is not None else None)
            for mode, figures, bar in (
                ("warm", warm, 100),
                ("image", from_image, image_bar),
                ("cold", cold, baseline["total"]),
            )
        },
        **(server_report if at_server else {}),
    }


def _run_modes(
    scratch: Path,
    repo: Path,
    modes: list[str],
    sessions: int,
    latency_ms: int,
    err: Any,
    image: str | None = None,
    server: Any = None,
) -> dict[str, Any]:
    from pydantic import SecretStr

    from app.runtime import build_runtime
    from app.schemas import RepoCreate
    from app.settings import Settings
    from images.image_jobs import build_images

    script = scratch / "script.json"
    script.write_text(json.dumps({"turns": [{"text": "Nothing to change."}]}))
    model = f"scripted:{script}?latency_ms={latency_ms}"
    over_http: dict[str, Any] = {}
    if server is not None:  # an OpenAI-compatible server on 127.0.0.1 (`model_server.py`)
        model = "openai:bench-model"
        over_http = {"openai_base_url": server.url, "openai_api_key": SecretStr("bench")}
    settings = Settings(
        _env_file=None,
        data_dir=scratch / "data",
        model=model,
        **over_http,
        image_interval=0,
        idle_seconds=0,
        auth="token",
    )
    runtime = build_runtime(settings)
    try:
        user = runtime.users.upsert("bench", "Bench Runner", "bench@example.com")
        name = runtime.repos.add(RepoCreate(url=str(repo), name="benchproj", image=image)).name
        runtime.start()
        out: dict[str, Any] = {"model": model, "modes": {}}
        if image is not None:
            out["environment"] = _first_pull(settings, image, err)
            if not out["environment"].pop("has_python3"):
                _commit_spec(repo, NO_PYTHON_SPEC)
                out["environment"]["setup"] = "none: the image has no python3"
        for mode in modes:
            if mode in ("image", "warm") and "image_build_ms" not in out:
                with err.status("building the image…"):
                    built = runtime.executor.submit(
                        lambda: build_images(runtime.image_jobs, [name], trigger="manual")
                    ).result()
                if built[0].outcome not in ("built", "skipped"):
                    raise BenchError(f"the image build failed: {built[0].message}")
                out["image_build_ms"] = built[0].ms
                again = runtime.executor.submit(
                    lambda: build_images(runtime.image_jobs, [name], trigger="manual")
                ).result()
                out["unchanged_skip_ms"] = again[0].ms  # what every scheduled check costs
            samples: dict[str, list[int]] = {"first": [], "ready": [], "sync": [], "server": []}
            lock = runtime.image_registry if mode == "cold" else None
            if lock is not None:
                # Hold the build lock so the build each cold start queues stays out of the way.
                lock.acquire_lock(name, "bench", 3600)
            try:
                for run in range(sessions):
                    err.print(f"[dim]{mode} {run + 1}/{sessions}[/]")
                    if mode == "warm":
                        _warm_up(runtime, user, name)
                    prompt = f"[{mode}-{run}] nothing to do"
                    first, ready, sync, seen, sid = _one_session(runtime, user, name, prompt)
                    if server is not None:
                        samples["server"].append(_at_server(runtime, server, sid, prompt))
                    if seen != mode:
                        raise BenchError(f"a {mode} run started its sandbox from {seen}")
                    samples["first"].append(first)
                    samples["ready"].append(ready)
                    if sync is not None:
                        samples["sync"].append(sync)
            finally:
                if lock is not None:
                    lock.release_lock(name, "bench")
            out["modes"][mode] = {
                "first_model_request_ms": samples_summary(samples["first"]),
                "sandbox_ready_ms": samples_summary(samples["ready"]),
                "sync_ms": samples_summary(samples["sync"]),
            }
            if server is not None:
                out["modes"][mode]["first_request_at_server_ms"] = samples_summary(
                    samples["server"]
                )
        return out
    finally:
        runtime.close()


def _at_server(runtime: Any, server: Any, session_id: str, prompt: str) -> int:
    """Prompt → its first request's arrival at the model server, in ms."""
    tag = prompt.split("]")[0] + "]"
    arrived = server.first_request(tag)
    if arrived is None:
        raise BenchError(f"the model server saw no request for {tag}")
    queued = runtime.sessions.prompts(session_id)[0].created_at
    return int((arrived - queued) * 1000)


def _first_pull(settings: Any, image: str, err: Any) -> dict[str, Any]:
    """Pull and unpack `image` into the scratch data dir, timed (the build then finds it)."""
    from images.oci_store import OciStore
    from images.setup import BuildError

    store = OciStore(
        settings.data_dir / "rootfs", auth_file=settings.registry_auth, max_mb=settings.image_max_mb
    )
    try:
        with err.status(f"pulling {image}…"):
            started = time.monotonic()
            _ref, digest, size = store.resolve(image)
            resolve_ms = int((time.monotonic() - started) * 1000)
            environment = store.pull(image)
            pull_ms = int((time.monotonic() - started) * 1000)
    except BuildError as exc:
        raise BenchError(str(exc)) from exc
    return {
        "image": image,
        "digest": digest,
        "layers_mb": round(size / 2**20, 1),
        "resolve_ms": resolve_ms,
        "first_pull_and_unpack_ms": pull_ms,
        "has_python3": environment.has_tool("python3"),
    }


def _commit_spec(repo: Path, text: str) -> None:
    """Replace the project's `.nightshift.toml` on its base branch."""
    (repo / ".nightshift.toml").write_text(text)
    identity = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]
    _git(repo, *identity, "commit", "-qam", "spec for an image without python3")


def _warm_up(runtime: Any, user: Any, repo: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    state = runtime.images.warm(user, repo)
    while state.state != "warm":
        if state.state == "failed" or time.monotonic() > deadline:
            raise BenchError(f"warming a sandbox failed: {state.error or 'timed out'}")
        time.sleep(0.02)
        state = runtime.images.warm_state(user, repo)
    time.sleep(0.2)  # let the pool settle, as when a person is still typing


def _one_session(
    runtime: Any, user: Any, repo: str, prompt: str, timeout: float = 600.0
) -> tuple[int, int, int | None, str, str]:
    """Run one session; (prompt → first model request, → sandbox ready, sync ms, mode, id)."""
    session = runtime.sessions.create(user, repo, prompt, source="cli")
    deadline = time.monotonic() + timeout
    while runtime.sessions.get(session.id).status not in ("finished", "failed", "stopped"):
        if time.monotonic() > deadline:
            raise BenchError(f"session {session.id} did not finish in {timeout:.0f}s")
        time.sleep(0.02)
    while session.id in getattr(runtime.dispatcher, "runners", {}):
        time.sleep(0.01)  # the runner is still releasing its sandbox
    events = runtime.sessions.events(session.id, 0, 10_000)
    first = next((e for e in events if e.type == "model_request" and e.step == 1), None)
    ready = next((e for e in events if e.type == "sandbox_ready"), None)
    sync = next((e for e in events if e.type == "sync_done"), None)
    if first is None or ready is None:
        errors = "; ".join(e.message for e in events if e.type == "error") or "no model request"
        raise BenchError(f"session {session.id} did not reach the model: {errors}")
    synced = sync.ms if sync else None
    return first.ms_since_prompt, ready.ms_since_prompt, synced, ready.mode, session.id
