"""`nightshift bench load`: many concurrent sessions against a fake model, on this machine.

The server (and, in distributed mode, Redis and the Celery workers) run as their own
processes, started here from a scratch directory; this process is only the client: it creates
the sessions over HTTP, follows every session's WebSocket, and polls the API as people would.

Measured:
- API latency: every request this client makes while the load runs: creating the sessions,
  and, as people would meanwhile, reading a session 4 times a second and the list once; and
  the `POST /api/sessions` of the burst on their own: each answer (`post_latency`, a 201 or
  a 503), each session to its 201 (`create_latency`, retries included), and how many were
  shed (503 + `Retry-After`, retried after the milliseconds the server asked for);
- API work: CPU milliseconds the API processes spent per session (`cpu_ms_per_session`: the
  Python processes themselves, in embedded mode runners included; the sandbox commands and git
  they start are `cpu_s.subprocesses`), and sessions created per second during the burst;
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
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.bench.stack import LoadConfig, Stack
from app.bench.stats import latency_summary
from app.overload import shed_retry_s
from workers.control_http import CLIENT_KEEP_ALIVE_S


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
        self.create_ms: list[float] = []
        """Each session of the burst, from its first `POST /api/sessions` to its 201."""
        self.post_ms: list[float] = []
        """Each `POST /api/sessions` answer of the burst, a 201 or a 503 alike."""
        self.shed = 0
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
            limits=httpx.Limits(
                max_connections=64,
                max_keepalive_connections=64,
                keepalive_expiry=CLIENT_KEEP_ALIVE_S,
            ),
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

    async def create(self, prompt: str) -> httpx.Response:
        """`POST /api/sessions`, retried as the CLI does when the server sheds it (a 503 with
        `Nightshift-Retry-After-Ms`), after the wait it asked for."""
        started = time.perf_counter()
        while True:
            sent = time.perf_counter()
            r = await self.http.post(
                "/api/sessions", json={"repo": self.stack.repo, "prompt": prompt}
            )
            self.post_ms.append((time.perf_counter() - sent) * 1000)
            wait = shed_retry_s(r.status_code, r.headers)
            if wait is None:
                break
            self.shed += 1
            await asyncio.sleep(wait)
        elapsed = (time.perf_counter() - started) * 1000
        self.api_ms.append(elapsed)
        self.create_ms.append(elapsed)
        if r.status_code >= 400:
            self.errors.append(f"POST /api/sessions: {r.status_code} {r.text[:200]}")
        return r

    async def start_one(self, n: int, followers: list[asyncio.Task[None]]) -> str | None:
        r = await self.create(f"look around #{n}")
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
        self.create_ms.clear()
        self.post_ms.clear()
        self.shed = 0
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
    api_cpu_s = cpu_after["api"] - cpu_before["api"]
    created = len(result["ids"])
    return {
        "benchmark": "load",
        "mode": config.mode,
        "api_processes": config.processes,
        "sessions": config.sessions,
        "sessions_completed": completed,
        "sessions_idle_at_end": len(idle),
        "model_latency_ms": config.latency_ms,
        "cpus": os.cpu_count(),
        "elapsed_s": round(result["elapsed_s"], 2),
        "create_s": round(result["created_s"], 2),
        "cpu_s": {k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after},
        "cpu_ms_per_session": round(api_cpu_s * 1000 / created, 1) if created else None,
        "sessions_created_per_s": (
            round(created / result["created_s"], 1) if result["created_s"] else None
        ),
        "post_latency": latency_summary(client.post_ms),
        "create_latency": latency_summary(client.create_ms),
        "creates_shed": client.shed,
        "load_average": os.getloadavg()[0],
        "api_latency": latency_summary(client.api_ms),
        "event_lag": latency_summary(client.lag_ms),
        "event_lag_after_all_started": latency_summary(
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
