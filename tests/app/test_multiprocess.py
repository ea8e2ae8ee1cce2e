"""Several API processes on one control DB: sessions sharded among them by ownership leases,
requests for a session forwarded to its owner, a killed process's sessions taken over.

Real `nightshift serve` processes (subprocesses) with the scripted OpenAI fake of this test
process as their model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.cluster import BIN, free_port_run
from tests.factories import Person, make_repo, wait_for
from tests.fakes.llm import Call, ScriptBook, Turn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
SECRET = "peer-secret-0123456789abcdefghij"


def _env(root: Path, openai_fake: ScriptBook, database_url: str | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
    env.update(
        NIGHTSHIFT_DATA_DIR=str(root / "data"),
        NIGHTSHIFT_PEER_SECRET=SECRET,
        NIGHTSHIFT_REAP_INTERVAL="0.5",
        NIGHTSHIFT_OWNER_TTL="5",
        NIGHTSHIFT_IDLE_SECONDS="0",
        NIGHTSHIFT_MODEL_RETRIES="3",
        # The bursts here test ownership, not shedding (tests/app/test_overload.py): slots for all.
        NIGHTSHIFT_MAX_PENDING_CREATES="16",
        NIGHTSHIFT_REPO_ROOTS=str(root),
        NIGHTSHIFT_MODEL="openai:fake-model",
        OPENAI_BASE_URL=openai_fake.url,  # type: ignore[attr-defined]
        OPENAI_API_KEY="sk-test-fake-key-0123456789abcdef",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["NIGHTSHIFT_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def _spawn(root: Path, name: str, args: list[str], env: dict) -> subprocess.Popen[bytes]:
    with open(root / f"{name}.log", "ab") as log:  # the child has its own copy
        return subprocess.Popen(
            [str(BIN / "nightshift"), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )


def _up(url: str, proc: subprocess.Popen[bytes], root: Path, name: str) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"{name} exited:\n{(root / f'{name}.log').read_text()[-4000:]}")
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _person(database_url: str) -> Person:
    from app.db import control_engine
    from app.services.users import Users

    engine = control_engine(database_url)
    try:
        users = Users(engine)
        user = users.upsert("pat", "Pat Parallel", "pat@example.com")
        return Person(user, users.create_token(user, "test"))
    finally:
        engine.dispose()


def _owners(database_url: str, column: str = "peer_url") -> dict[str, str]:
    """session id → the peer URL (or the process id) of the process that owns it."""
    from sqlalchemy import text

    from app.db import control_engine

    engine = control_engine(database_url)
    try:
        with engine.connect() as conn:
            query = text(f"SELECT session_id, {column} FROM session_owners")  # noqa: S608
            rows = conn.execute(query).all()
        return {str(r[0]): str(r[1]) for r in rows}
    finally:
        engine.dispose()


def _done(http: httpx.Client, session_id: str) -> dict[str, Any] | None:
    row = http.get(f"/api/sessions/{session_id}").json()
    return row if row["status"] in ("finished", "failed", "stopped") else None


def _check_events(events: list[dict[str, Any]]) -> None:
    """Ids 1..n, no gap, no duplicate; every prompt finished exactly once."""
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    queued = {e["prompt_id"] for e in events if e["type"] == "prompt_queued"}
    finished = Counter(e["prompt_id"] for e in events if e["type"] == "prompt_finished")
    assert set(finished) == queued and set(finished.values()) == {1}, (queued, finished)


async def _ws_collect(url: str, token: str, until_status: str = "finished") -> list[dict]:
    """Events from a WebSocket until a `status` event with `until_status`."""
    out = []
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            out.append(frame)
            if frame.get("type") == "status" and frame.get("status") == until_status:
                return out


def _sse_collect(url: str, token: str, last_id: int) -> list[dict]:
    """Events from the SSE stream until the one with id `last_id`."""
    out: list[dict] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", url, headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[len("data: ") :]))
                if out[-1]["id"] >= last_id:
                    return out
    raise AssertionError(f"the SSE stream ended before event {last_id}: {out}")


@pytest.mark.postgres
def test_three_processes_share_sessions_and_take_over_a_killed_ones(
    openai_fake: ScriptBook, postgres_url: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "mp")
    gate = threading.Event()
    openai_fake.script(
        "parallel task",
        Turn.tool("write_file", "Writing.", path="P.md", content="parallel\n"),
        Turn(text="Looking again.", calls=[Call("list_files", {"path": "."})], gate=gate),
        Turn.tool("finish", summary="done", title="Parallel"),
    )
    base = free_port_run(3)  # below the ephemeral range: no other test's port-0 server
    ports = [base, base + 1, base + 2]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            env = _env(tmp_path, openai_fake, postgres_url, NIGHTSHIFT_PEER_URL=url)
            procs.append(_spawn(tmp_path, f"api{i}", ["serve", "--port", str(port)], env))
            # The first one migrates the fresh database; the others start once it has.
            name = f"api{i}"
            wait_for(lambda u=url, n=name: _up(u, procs[-1], tmp_path, n), 60, name)
        pat = _person(postgres_url)
        clients = [
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {pat.token}"}, timeout=60)
            for url in urls
        ]
        assert clients[0].post("/api/repos", json={"url": str(repo)}).status_code == 201

        # A burst, spread over the three processes: each owns what it created.
        def create(i: int) -> tuple[int, str]:
            answer = clients[i % 3].post(
                "/api/sessions", json={"repo": "mp", "prompt": f"parallel task {i}"}
            )
            assert answer.status_code == 201, answer.text
            return i % 3, answer.json()["id"]

        with ThreadPoolExecutor(9) as pool:
            created = list(pool.map(create, range(9)))
        owners = _owners(postgres_url)
        assert {sid: owners[sid] for _, sid in created} == {sid: urls[i] for i, sid in created}

        # Every session is mid-prompt (its first tool ran; the next model turn waits).
        def started(session_id: str) -> bool:
            events = clients[1].get(f"/api/sessions/{session_id}/events").json()
            return any(e["type"] == "tool_result" for e in events)

        for _, sid in created:
            wait_for(lambda sid=sid: started(sid), 120, f"session {sid} to run its first tool")

        # A WebSocket on process 1 streams, live, a session process 2 owns.
        watched = next(sid for i, sid in created if i == 2)
        ws_url = urls[1].replace("http", "ws") + f"/api/sessions/{watched}/stream"
        with ThreadPoolExecutor(1) as pool:
            streamed = pool.submit(asyncio.run, _ws_collect(ws_url, pat.token))

            os.killpg(procs[0].pid, signal.SIGKILL)  # process 0 dies with its runners
            procs[0].wait(10)
            gate.set()

            survivors = clients[1:]
            for n, (_, sid) in enumerate(created):
                http = survivors[n % 2]
                done = wait_for(lambda sid=sid, h=http: _done(h, sid), 180, f"session {sid}")
                assert done["status"] == "finished", done
            frames = streamed.result(timeout=60)

        for i, sid in created:
            events = clients[1].get(f"/api/sessions/{sid}/events", params={"limit": 5000}).json()
            _check_events(events)
            assert events == clients[2].get(f"/api/sessions/{sid}/events?limit=5000").json()
            resumed = [e for e in events if e["type"] == "run_resumed"]
            if i == 0:  # process 0's sessions were taken over and resumed, attempt 2
                assert resumed and all(e["attempt"] == 2 for e in resumed), events
            else:
                assert not resumed, events
        moved = _owners(postgres_url)
        assert all(moved[sid] in urls[1:] for _, sid in created)

        stored = clients[2].get(f"/api/sessions/{watched}/events").json()
        assert frames == stored[: len(frames)] and frames[-1]["status"] == "finished"
        for client in clients:
            client.close()
    finally:
        for proc in procs:
            _stop(proc)


def test_a_non_owner_answers_as_the_owner_does(openai_fake: ScriptBook, tmp_path: Path) -> None:
    """`serve --processes 2` on a SQLite control DB: each child also listens on its own peer
    port, so a test can ask the owner and the other process the same thing."""
    repo = make_repo(tmp_path, "same")
    openai_fake.script(
        "same answer",
        Turn.tool("write_file", "Writing.", path="S.md", content="same\n"),
        Turn.tool("finish", summary="done", title="Same"),
    )
    openai_fake.script("follow along", Turn.tool("finish", summary="again", title="Again"))
    port = free_port_run(3)  # the shared port and the two peer ports after it
    env = _env(tmp_path, openai_fake, None)
    proc = _spawn(tmp_path, "serve", ["serve", "--port", str(port), "--processes", "2"], env)
    peers = [f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"]
    try:
        for url in (f"http://127.0.0.1:{port}", *peers):
            wait_for(lambda url=url: _up(url, proc, tmp_path, "serve"), 90, url)
        database = f"sqlite:///{tmp_path / 'data' / 'control.db'}"
        pat = _person(database)
        auth = {"Authorization": f"Bearer {pat.token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60) as shared:
            assert shared.post("/api/repos", json={"url": str(repo)}).status_code == 201
            session = shared.post("/api/sessions", json={"repo": "same", "prompt": "same answer"})
            assert session.status_code == 201, session.text
        sid = session.json()["id"]
        # Each process says where its peers reach it, and how many sessions it owns.
        health = [httpx.get(url + "/healthz", timeout=30).json() for url in peers]
        assert [h["peer_url"] for h in health] == peers
        assert sorted(h["sessions_owned"] for h in health) == [0, 1]
        owner_url = _owners(database)[sid]
        other_url = next(url for url in peers if url != owner_url)
        owner = httpx.Client(base_url=owner_url, headers=auth, timeout=60)
        other = httpx.Client(base_url=other_url, headers=auth, timeout=60)
        wait_for(lambda: _done(other, sid), 120, "the session")

        # REST: the same answers, whichever process is asked.
        for path in (
            f"/api/sessions/{sid}",
            f"/api/sessions/{sid}/prompts",
            f"/api/sessions/{sid}/events?after=3",
            f"/api/sessions/{sid}/events?after=2&note=a%20b|c'd%2F~",  # forwarded byte for byte
        ):
            assert other.get(path).json() == owner.get(path).json(), path
        events = owner.get(f"/api/sessions/{sid}/events").json()
        _check_events(events)
        last = events[-1]["id"]

        # WebSocket resume with after=N, and SSE, through the other process.
        after = 3
        for base in (owner_url, other_url):
            frames = asyncio.run(
                _ws_collect(
                    base.replace("http", "ws") + f"/api/sessions/{sid}/stream?after={after}",
                    pat.token,
                )
            )
            assert frames == events[after : events.index(frames[-1]) + 1]
            sse = _sse_collect(
                base + f"/api/sessions/{sid}/events/stream?after={after}", pat.token, last
            )
            assert sse == events[after:]

        # A follow-up sent to the other process runs on the owner, which keeps the session.
        answer = other.post(f"/api/sessions/{sid}/prompts", json={"text": "follow along"})
        assert answer.status_code == 202, answer.text
        wait_for(
            lambda: (
                len(owner.get(f"/api/sessions/{sid}/prompts").json()) == 2 and _done(owner, sid)
            ),
            120,
            "the follow-up",
        )
        assert _owners(database)[sid] == owner_url
        events = other.get(f"/api/sessions/{sid}/events").json()
        _check_events(events)
        assert events == owner.get(f"/api/sessions/{sid}/events").json()

        # The peer header is the processes' own: a forged one is refused, not obeyed.
        forged = other.get(f"/api/sessions/{sid}", headers={"X-Nightshift-Peer": "1.abc"})
        assert forged.status_code == 403
        assert other.get(f"/api/sessions/{sid}", headers={"Authorization": ""}).status_code == 401

        # The owner dies: the other process answers for the session at once (it claims it),
        # and the supervisor restarts the dead one, which then forwards to the new owner.
        os.kill(int(_owners(database, "process_id")[sid].rsplit("-", 2)[-2]), signal.SIGKILL)
        # Until the process is seen gone its requests answer 503 (Retry-After), as clients expect.
        taken = wait_for(
            lambda: (r := other.get(f"/api/sessions/{sid}/events")).status_code == 200 and r,
            30,
            "the other process to take the session over",
        )
        assert taken.json() == events
        assert _owners(database)[sid] == other_url
        wait_for(lambda: _up(owner_url, proc, tmp_path, "serve"), 90, "the restarted process")
        assert owner.get(f"/api/sessions/{sid}/events").json() == events
        assert _owners(database)[sid] == other_url
        owner.close()
        other.close()
    finally:
        _stop(proc)


@pytest.mark.postgres
@pytest.mark.redis
def test_distributed_three_processes_persist_each_sessions_events_once(
    openai_fake: ScriptBook, postgres_url: str, tmp_path: Path
) -> None:
    """Distributed mode: a Celery worker runs the sessions and publishes on Redis streams;
    each API process persists the streams of the sessions it owns. One API process is
    SIGKILLed mid-run: the others take its sessions over and persist the rest of their events,
    none twice."""
    from tests.cluster import WORKER_TOKEN, RedisServer

    repo = make_repo(tmp_path, "dist")
    gate = threading.Event()
    openai_fake.script(
        "distributed task",
        Turn.tool("write_file", "Writing.", path="D.md", content="distributed\n"),
        Turn(text="Looking again.", calls=[Call("list_files", {"path": "."})], gate=gate),
        Turn.tool("finish", summary="done", title="Distributed"),
    )
    redis_server = RedisServer(tmp_path).start()
    base = free_port_run(3)  # below the ephemeral range: no other test's port-0 server
    ports = [base, base + 1, base + 2]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    broker = {
        "NIGHTSHIFT_BROKER_URL": redis_server.url(),
        "NIGHTSHIFT_WORKER_TOKEN": WORKER_TOKEN,
        "NIGHTSHIFT_CONTROL_URL": urls[1],  # a survivor; it forwards to each session's owner
    }
    procs: list[subprocess.Popen[bytes]] = []
    worker = None
    try:
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            env = _env(tmp_path, openai_fake, postgres_url, NIGHTSHIFT_PEER_URL=url, **broker)
            procs.append(_spawn(tmp_path, f"api{i}", ["serve", "--port", str(port)], env))
            name = f"api{i}"
            wait_for(lambda u=url, n=name: _up(u, procs[-1], tmp_path, n), 60, name)
        env = _env(
            tmp_path,
            openai_fake,
            postgres_url,
            NIGHTSHIFT_DATA_DIR=str(tmp_path / "worker-data"),
            **broker,
        )
        worker = _spawn(tmp_path, "w1", ["worker", "--name", "w1", "--concurrency", "8"], env)
        log = tmp_path / "w1.log"
        wait_for(lambda: "@w1 ready." in log.read_text(errors="replace"), 60, "the worker")
        pat = _person(postgres_url)
        clients = [
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {pat.token}"}, timeout=60)
            for url in urls
        ]
        assert clients[0].post("/api/repos", json={"url": str(repo)}).status_code == 201

        def create(i: int) -> tuple[int, str]:
            answer = clients[i % 3].post(
                "/api/sessions", json={"repo": "dist", "prompt": f"distributed task {i}"}
            )
            assert answer.status_code == 201, answer.text
            return i % 3, answer.json()["id"]

        with ThreadPoolExecutor(6) as pool:
            created = list(pool.map(create, range(6)))
        owners = _owners(postgres_url)
        assert {sid: owners[sid] for _, sid in created} == {sid: urls[i] for i, sid in created}

        def started(session_id: str) -> bool:
            events = clients[1].get(f"/api/sessions/{session_id}/events").json()
            return any(e["type"] == "tool_result" for e in events)

        for _, sid in created:
            wait_for(lambda sid=sid: started(sid), 120, f"session {sid} to run its first tool")
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        gate.set()
        for n, (_, sid) in enumerate(created):
            http = clients[1 + n % 2]
            done = wait_for(lambda sid=sid, h=http: _done(h, sid), 180, f"session {sid}")
            assert done["status"] == "finished", done
        for _, sid in created:
            events = clients[1].get(f"/api/sessions/{sid}/events", params={"limit": 5000}).json()
            _check_events(events)
            assert events == clients[2].get(f"/api/sessions/{sid}/events?limit=5000").json()
        moved = _owners(postgres_url)
        assert all(moved[sid] in urls[1:] for _, sid in created)
        for client in clients:
            client.close()
    finally:
        for proc in procs:
            _stop(proc)
        if worker is not None:
            _stop(worker)
        redis_server.stop(keep_data=False)


def test_processes_stop_when_one_cannot_listen(openai_fake: ScriptBook, tmp_path: Path) -> None:
    """A peer port taken is no transient failure: `serve --processes` stops, saying why."""
    import socket

    port = free_port_run(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 2))  # the second process's peer port
        taken.listen(1)
        result = subprocess.run(
            [str(BIN / "nightshift"), "serve", "--port", str(port), "--processes", "2"],
            env=_env(tmp_path, openai_fake, None),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "API process 1 cannot listen" in result.stderr
    assert "could not start; stopping the others" in result.stdout


def test_the_hosts_backlog_is_split_among_its_processes(make_settings: Any) -> None:
    """`serve --processes N` gives each process its share of NIGHTSHIFT_MAX_PENDING_CREATES:
    the bound is the host's, so a burst is shed as early as with one process."""
    from app.commands.processes import child_env

    settings = make_settings(max_pending_creates=16)
    shares = [child_env(settings, slot, "secret", 3) for slot in range(3)]
    assert [env["NIGHTSHIFT_MAX_PENDING_CREATES"] for env in shares] == ["6", "6", "6"]
    assert child_env(settings, 0, "secret", 1)["NIGHTSHIFT_MAX_PENDING_CREATES"] == "16"
    few = make_settings(max_pending_creates=2)
    assert child_env(few, 0, "secret", 4)["NIGHTSHIFT_MAX_PENDING_CREATES"] == "1"
    assert shares[1]["NIGHTSHIFT_PEER_URL"].endswith(f":{settings.port + 2}")
