"""`nightshift bench load`: many concurrent sessions against a fake model, on this machine.

The server (and, in distributed mode, Redis and the Celery workers) run as their own
processes, started here from a scratch directory; this process is only the client: it creates
the sessions over HTTP, follows every session's WebSocket, and polls the API as people would.

Measured:
- API latency: every request this client makes while the load runs: creating the sessions,
  and, as people would meanwhile, reading a session 4 times a second and the list once;
- event delivery lag: an event's creation time (`ts`, stamped where the runner made it) to its
  arrival on the client's WebSocket, for events created after the socket was open;
- memory per idle session: resident memory of the server processes with every session idle
  (its runner waiting for a follow-up, its sandbox kept), less the same before the load, per
  session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx

Mode = Literal["embedded", "distributed"]

SCRIPT = {
    "turns": [
        {
            "text": "Reading the project first. " * 12,
            "tool_calls": [{"name": "read_file", "arguments": {"path": "README.md"}}],
        },
        {
            "text": "Looking around the tree before answering. " * 8,
            "tool_calls": [{"name": "list_files", "arguments": {"path": "."}}],
        },
        {
            "text": "Nothing to change for: {prompt}",
            "tool_calls": [{"name": "finish", "arguments": {"summary": "Looked; nothing to do."}}],
        },
    ]
}


@dataclass
class LoadConfig:
    sessions: int = 200
    latency_ms: int = 1000
    mode: Mode = "embedded"
    workers: int = 2
    worker_concurrency: int | None = None
    idle_seconds: float = 60.0
    database_url: str | None = None
    broker_url: str | None = None
    timeout_s: float = 600.0
    keep: bool = False
    progress: Callable[[str], None] = field(default=lambda _msg: None)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _summary(values_ms: list[float]) -> dict[str, Any]:
    return {
        "count": len(values_ms),
        "p50_ms": _percentile(values_ms, 0.50),
        "p95_ms": _percentile(values_ms, 0.95),
        "p99_ms": _percentile(values_ms, 0.99),
        "max_ms": round(max(values_ms), 1) if values_ms else None,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kb(pid: int) -> int:
    """Resident memory of a process and its descendants, in kB (from /proc)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a process and its live descendants, and of the children
    they waited for (git, bubblewrap, cp: the sandbox and forge work)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14-17 of the line, 12-15 after the name.
            own += (int(fields[11]) + int(fields[12])) / tick
            children += (int(fields[13]) + int(fields[14])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return own, children


class Stack:
    """The processes under test, started from a scratch directory."""

    def __init__(self, config: LoadConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.broker_url = config.broker_url
        self.bin = Path(sys.executable).parent / "nightshift"
        self.worker_token = "bench-" + secrets.token_hex(16)
        self.repo = f"bench-{secrets.token_hex(3)}"
        """Unique per run: a reused control DB (--database-url) keeps earlier runs' repos."""

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
        script = self.root / "script.json"
        env.update(
            NIGHTSHIFT_MODEL=f"scripted:{script}?latency_ms={self.config.latency_ms}&chunk=16",
            NIGHTSHIFT_AUTH="token",
            NIGHTSHIFT_PUBLIC_URL=self.url,
            NIGHTSHIFT_IDLE_SECONDS=str(self.config.idle_seconds),
            NIGHTSHIFT_DATA_DIR=str(self.root / "api"),
        )
        if self.config.database_url:
            env["NIGHTSHIFT_DATABASE_URL"] = self.config.database_url
        if self.config.mode == "distributed":
            assert self.broker_url is not None
            env.update(
                NIGHTSHIFT_BROKER_URL=self.broker_url,
                NIGHTSHIFT_WORKER_TOKEN=self.worker_token,
                NIGHTSHIFT_CONTROL_URL=self.url,
            )
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        (self.root / "script.json").write_text(json.dumps(SCRIPT))
        if self.config.mode == "distributed" and not self.broker_url:
            self._start_redis()
        env = self.env()
        self.spawn("api", [str(self.bin), "serve", "--port", str(self.port)], env)
        self._wait(lambda: self._healthy(), 60, "the API")
        if self.config.mode == "distributed":
            per_worker = self.config.worker_concurrency or max(
                8, -(-self.config.sessions // self.config.workers) + 4
            )
            for n in range(self.config.workers):
                name = f"bench-w{n + 1}"
                self.spawn(
                    name,
                    [
                        str(self.bin),
                        "worker",
                        "--name",
                        name,
                        "--concurrency",
                        str(per_worker),
                        "--loglevel",
                        "INFO",
                    ],
                    {**env, "NIGHTSHIFT_DATA_DIR": str(self.root / "workers")},
                )
            for n in range(self.config.workers):
                name = f"bench-w{n + 1}"
                self._wait(partial(self._worker_ready, name), 60, f"worker {name}")

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "distributed mode needs Redis: pass --broker-url, or install redis-server"
            )
        port = _free_port()
        (self.root / "redis").mkdir()
        self.spawn(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.root / "redis"),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            dict(os.environ),
        )
        self.broker_url = f"redis://127.0.0.1:{port}/0"
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=1)
        self._wait(lambda: _pings(client), 20, "redis-server")
        client.close()

    def _worker_ready(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited; see {self.root / (name + '.log')}")
        return f"@{name} ready." in (self.root / f"{name}.log").read_text(errors="replace")

    def _healthy(self) -> bool:
        proc = self.procs["api"]
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited; see {self.root / 'api.log'}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @staticmethod
    def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def token(self) -> str:
        out = subprocess.run(
            [
                str(self.bin),
                "tokens",
                "create",
                "--name",
                "Bench Person",
                "--email",
                "bench@example.com",
                "--label",
                "bench",
            ],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def server_pids(self) -> list[int]:
        return [p.pid for name, p in self.procs.items() if name != "redis"]

    def rss_kb(self) -> int:
        return sum(_rss_kb(pid) for pid in self.server_pids())

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far: the API, the workers, and the subprocesses they ran."""
        out = {"api": 0.0, "workers": 0.0, "subprocesses": 0.0}
        for name, proc in self.procs.items():
            if name == "redis":
                continue
            own, children = _cpu_s(proc.pid)
            out["api" if name == "api" else "workers"] += own
            out["subprocesses"] += children
        return out

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "redis"):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _make_repo(root: Path) -> Path:
    repo = root / "bench-repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README.md").write_text("# bench\n\nA small repository for the load benchmark.\n")
    for n in range(20):
        (repo / "src").mkdir(exist_ok=True)
        (repo / "src" / f"mod{n}.py").write_text(f"VALUE = {n}\n")
    ident = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), *ident, "commit", "-qm", "bench"], check=True)
    return repo


class Client:
    """The load: sessions created over HTTP, followed over WebSockets, the API polled."""

    def __init__(self, stack: Stack, token: str, config: LoadConfig) -> None:
        self.stack = stack
        self.token = token
        self.config = config
        self.api_ms: list[float] = []
        self.lag_ms: list[float] = []
        self.lag_at: list[float] = []
        """When each lagged event was created (to split the start burst from steady running)."""
        self.load_started = 0.0
        self.all_created = 0.0
        self.status: dict[str, str] = {}
        self.outcome: dict[str, str] = {}
        self.errors: list[str] = []
        self.http = httpx.AsyncClient(
            base_url=stack.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        response = await self.http.request(method, path, **kwargs)
        self.api_ms.append((time.perf_counter() - started) * 1000)
        if response.status_code >= 400:
            self.errors.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    async def follow(self, session_id: str, opened: asyncio.Event) -> None:
        """Follow one session's WebSocket until it settles; reconnect (resuming) if dropped."""
        import websockets

        url = self.stack.url.replace("http", "ws", 1)
        last = 0
        for _ in range(5):
            uri = f"{url}/api/sessions/{session_id}/stream?after={last}&token={self.token}"
            try:
                last = await self._stream(uri, session_id, opened, last)
                return
            except (OSError, websockets.WebSocketException) as exc:
                self.errors.append(f"stream of {session_id}: {type(exc).__name__}: {exc}")
                opened.set()
                await asyncio.sleep(0.5)

    async def _stream(self, uri: str, session_id: str, opened: asyncio.Event, last: int) -> int:
        import websockets

        async with websockets.connect(
            uri, max_size=None, ping_interval=None, open_timeout=60
        ) as ws:
            since = time.time()
            opened.set()
            async for raw in ws:
                now = time.time()
                event = json.loads(raw)
                last = max(last, int(event["id"]))
                if event["ts"] >= since:
                    self.lag_ms.append((now - event["ts"]) * 1000)
                    self.lag_at.append(event["ts"])
                if event["type"] == "status":
                    self.status[session_id] = event["status"]
                elif event["type"] == "prompt_finished":
                    self.outcome[session_id] = event["outcome"]
                if self.status.get(session_id) in ("idle", "finished", "failed", "stopped"):
                    return last
        return last

    async def start_one(self, n: int, followers: list[asyncio.Task[None]]) -> str | None:
        r = await self.request(
            "POST", "/api/sessions", json={"repo": self.stack.repo, "prompt": f"look around #{n}"}
        )
        if r.status_code != 201:
            return None
        session_id = str(r.json()["id"])
        opened = asyncio.Event()
        followers.append(asyncio.create_task(self.follow(session_id, opened)))
        await opened.wait()
        return session_id

    async def poll(self, ids: list[str], done: asyncio.Event) -> None:
        """People using the API meanwhile: a session read 4 times a second, the list once."""
        tick = 0
        while not done.is_set():
            if ids:
                await self.request("GET", f"/api/sessions/{random.choice(ids)}")
            if tick % 4 == 0:
                await self.request("GET", "/api/sessions", params={"limit": 20})
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)

    async def warm_up(self) -> None:
        """One session first, so the image exists before the load (its build is not measured)."""
        opened = asyncio.Event()
        r = await self.request(
            "POST", "/api/sessions", json={"repo": self.stack.repo, "prompt": "warm up"}
        )
        r.raise_for_status()
        await asyncio.wait_for(self.follow(str(r.json()["id"]), opened), 120)
        self.api_ms.clear()
        self.lag_ms.clear()
        self.lag_at.clear()
        self.status.clear()
        self.outcome.clear()

    async def run(self) -> dict[str, Any]:
        followers: list[asyncio.Task[None]] = []
        ids: list[str] = []
        done = asyncio.Event()
        poller = asyncio.create_task(self.poll(ids, done))
        started = time.monotonic()
        self.load_started = time.time()
        create = asyncio.Semaphore(32)

        async def one(n: int) -> None:
            async with create:
                session_id = await self.start_one(n, followers)
            if session_id:
                ids.append(session_id)

        await asyncio.gather(*(one(n) for n in range(self.config.sessions)))
        created_s = time.monotonic() - started
        self.all_created = time.time()
        self.config.progress(f"{len(ids)} sessions created in {created_s:.1f}s; following them")
        try:
            await asyncio.wait_for(
                asyncio.gather(*followers, return_exceptions=True), self.config.timeout_s
            )
        except TimeoutError:
            self.errors.append(f"not every session settled within {self.config.timeout_s}s")
        elapsed = time.monotonic() - started
        done.set()
        await poller
        return {"ids": ids, "created_s": created_s, "elapsed_s": elapsed}


def run_load(config: LoadConfig) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="nightshift-bench-"))
    stack = Stack(config, root)
    try:
        config.progress(f"starting the {config.mode} stack in {root}")
        stack.start()
        token = stack.token()
        httpx.post(
            stack.url + "/api/repos",
            json={"url": str(_make_repo(root)), "name": stack.repo},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).raise_for_status()
        return asyncio.run(_measure(stack, token, config))
    finally:
        stack.stop()
        from images.sandboxes.overlay import release_stale_mounts

        release_stale_mounts(root, set())  # what a worker stopped mid-session left mounted
        if not config.keep:
            shutil.rmtree(root, ignore_errors=True)


async def _measure(stack: Stack, token: str, config: LoadConfig) -> dict[str, Any]:
    client = Client(stack, token, config)
    try:
        await client.warm_up()
        await asyncio.sleep(1.0)
        baseline_kb = stack.rss_kb()
        cpu_before = stack.cpu_s()
        config.progress(f"warm; starting {config.sessions} sessions")
        result = await client.run()
        idle = [s for s in result["ids"] if client.status.get(s) == "idle"]
        idle_kb = stack.rss_kb()
        cpu_after = stack.cpu_s()
    finally:
        await client.http.aclose()
    completed = sum(1 for s in result["ids"] if client.outcome.get(s) == "done")
    per_idle = (idle_kb - baseline_kb) / len(idle) if idle else None
    return {
        "benchmark": "load",
        "mode": config.mode,
        "sessions": config.sessions,
        "sessions_completed": completed,
        "sessions_idle_at_end": len(idle),
        "model_latency_ms": config.latency_ms,
        "cpus": os.cpu_count(),
        "elapsed_s": round(result["elapsed_s"], 2),
        "create_s": round(result["created_s"], 2),
        "cpu_s": {k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after},
        "load_average": os.getloadavg()[0],
        "api_latency": _summary(client.api_ms),
        "event_lag": _summary(client.lag_ms),
        "event_lag_after_all_started": _summary(
            [
                lag
                for lag, at in zip(client.lag_ms, client.lag_at, strict=True)
                if at > client.all_created
            ]
        ),
        "memory": {
            "server_rss_mb_before": round(baseline_kb / 1024, 1),
            "server_rss_mb_idle": round(idle_kb / 1024, 1),
            "per_idle_session_kb": round(per_idle, 1) if per_idle is not None else None,
            "processes": len(stack.server_pids()),
        },
        "workers": config.workers if config.mode == "distributed" else 0,
        "control_db": "postgresql" if config.database_url else "sqlite",
        "errors": client.errors[:20],
    }
