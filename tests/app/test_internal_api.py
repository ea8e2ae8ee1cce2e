"""The internal API and its HTTP client: what a remote worker uses instead of session files.

The API here runs in distributed mode against the local Redis, with no Celery worker: the test
itself plays the worker, with the same `WorkerContext` `nightshift worker` builds."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from app.models import Session
from tests.factories import ApiClient, Person, git, make_person, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer
from workers.control import RunStart
from workers.control_http import HttpControlPlane
from workers.errors import ControlPlaneError, ControlPlaneUnavailable

pytestmark = pytest.mark.redis
TOKEN = "worker-token-" + secrets.token_hex(8)


@pytest.fixture
def model(openai_fake: ScriptBook) -> dict[str, Any]:
    return {
        "model": "openai:fake-model",
        "openai_base_url": openai_fake.url,  # type: ignore[attr-defined]
        "openai_api_key": "sk-test-fake-key-0123456789abcdef",
    }


@pytest.fixture
def api_runtime(make_settings: Any, redis_url: str, model: dict[str, Any]) -> Iterator[Any]:
    from app.runtime import build_runtime

    rt = build_runtime(make_settings(broker_url=redis_url, worker_token=TOKEN, **model))
    rt.start()
    yield rt
    rt.close()


@pytest.fixture
def api_server(api_runtime: Any) -> Iterator[BackgroundServer]:
    from app.main import create_app

    with BackgroundServer(create_app(runtime=api_runtime)) as server:
        yield server


def test_internal_routes_need_the_worker_token_and_stay_out_of_the_docs(
    api_server: BackgroundServer, make_settings: Any
) -> None:
    url = f"{api_server.url}/internal/v1/repos"
    assert httpx.get(url, timeout=30).status_code == 401
    assert (
        httpx.get(url, headers={"X-Nightshift-Worker-Token": "wrong"}, timeout=30).status_code
        == 401
    )
    user_token = {"Authorization": f"Bearer {TOKEN}"}  # a user-style header is not enough
    assert httpx.get(url, headers=user_token, timeout=30).status_code == 401
    assert httpx.get(url, headers={"X-Nightshift-Worker-Token": TOKEN}, timeout=30).json() == []
    schema = httpx.get(f"{api_server.url}/openapi.json", timeout=30).json()
    assert not [p for p in schema["paths"] if p.startswith("/internal")]


def test_without_a_worker_token_the_internal_routes_refuse(runtime: Any) -> None:
    from app.main import create_app

    with BackgroundServer(create_app(runtime=runtime)) as server:
        r = httpx.get(
            f"{server.url}/internal/v1/repos",
            headers={"X-Nightshift-Worker-Token": "x" * 20},
            timeout=30,
        )
    assert r.status_code == 403 and "NIGHTSHIFT_WORKER_TOKEN" in r.json()["detail"]


def test_distributed_mode_refuses_to_start_without_a_worker_token(
    make_settings: Any, redis_url: str
) -> None:
    from app.runtime import build_runtime

    with pytest.raises(ValueError, match="NIGHTSHIFT_WORKER_TOKEN"):
        build_runtime(make_settings(broker_url=redis_url))


def test_a_worker_context_runs_a_session_over_http_and_redis(
    api_runtime: Any,
    api_server: BackgroundServer,
    make_settings: Any,
    redis_url: str,
    model: dict[str, Any],
    openai_fake: ScriptBook,
    tmp_path: Path,
) -> None:
    from app.worker_runtime import build_worker

    person = make_person(api_runtime, "wanda", "Wanda Worker", "wanda@example.com")
    with httpx.Client(
        base_url=api_server.url, headers={"Authorization": f"Bearer {person.token}"}, timeout=30
    ) as http:
        api = ApiClient(http, api_server.url, person)
        repo = make_repo(tmp_path, "remote")
        api.add_repo(repo)
        openai_fake.script(
            "over http",
            Turn.tool("write_file", path="REMOTE.md", content="remote\n"),
            Turn.tool("finish", summary="Remote work.", title="Remote"),
        )
        session = api.create("remote", "over http please")
        assert api.session(session["id"])["status"] == "queued"  # no worker yet
        worker_settings = make_settings(
            broker_url=redis_url, worker_token=TOKEN, control_url=api_server.url, **model
        ).model_copy(update={"data_dir": tmp_path / "worker"})
        context = build_worker(worker_settings, node="test-worker")
        try:
            context.run_session(session["id"])
            # A duplicate delivery after the work is done changes nothing.
            before = api.events(session["id"])
            context.run_session(session["id"])
        finally:
            context.shutdown()
        done = api.wait_status(session["id"], "finished", "failed", timeout=10)
        assert done["status"] == "finished"
        events = api.events(session["id"])
        assert events == before
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert git(repo, "show", f"nightshift/{session['id']}:REMOTE.md") == "remote\n"
        assert done["pr_number"] == 1
    # The worker kept its sandboxes under its own node directory, not the API's.
    assert (tmp_path / "worker" / "workers" / "test-worker").is_dir()
    assert not (tmp_path / "ns" / "sandboxes").exists() or not any(
        (tmp_path / "ns" / "sandboxes").iterdir()
    )


def _person_with_repo(
    api_runtime: Any, tmp_path: Path, login: str, name: str, email: str, repo: str
) -> Person:
    """A user of the API's runtime and a registered repo `repo` to start sessions on."""
    from app.schemas import RepoCreate

    person = make_person(api_runtime, login, name, email)
    api_runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, repo))))
    return person


def test_a_run_starts_with_its_lease_prompt_and_context_in_one_request(
    api_runtime: Any, api_server: BackgroundServer, tmp_path: Path
) -> None:
    person = _person_with_repo(
        api_runtime, tmp_path, "ida", "Ida Start", "ida@example.com", "begin"
    )
    session = api_runtime.sessions.create(person.user, "begin", "start here")
    empty = api_runtime.sessions.create(person.user, "begin", "never run")
    halted = api_runtime.sessions.create(person.user, "begin", "asked to stop")

    # Without the worker token: refused, and nothing is claimed.
    forged = httpx.post(
        f"{api_server.url}/internal/v1/sessions/{session.id}/start",
        json={"runner_id": "x"},
        timeout=30,
    )
    assert forged.status_code == 401

    async def go() -> None:
        control = HttpControlPlane(api_server.url, TOKEN)
        try:
            start = await control.start_run(session.id, "runner-a", 30)
            assert start.leased and start.job is not None and start.context is not None
            assert (start.job.id, start.job.text, start.job.author.login) == (
                1,
                "start here",
                "ida",
            )
            assert start.context.repo.name == "begin"
            assert start.context.branch == f"nightshift/{session.id}"
            # Another runner gets nothing; the holder asking again (a lost reply) gets the same.
            assert await control.start_run(session.id, "runner-b", 30) == RunStart(leased=False)
            again = await control.start_run(session.id, "runner-a", 30)
            assert again.job is not None and (again.job.id, again.job.attempt) == (1, 1)
            with pytest.raises(ControlPlaneError, match="no session"):
                await control.start_run("ffffffffffff", "runner-a", 30)
            # A session whose queue is empty: the lease, and nothing to run.
            api_runtime.sessions.files.get(empty.id).cancel_queued()
            assert await control.start_run(empty.id, "runner-c", 30) == RunStart(leased=True)
            # A stop asked for before the run began: the lease, and its queued prompt stays.
            with api_runtime.sessions.engine.begin() as conn:
                conn.execute(
                    update(Session).where(col(Session.id) == halted.id).values(stop_requested=True)
                )
            assert await control.start_run(halted.id, "runner-d", 30) == RunStart(leased=True)
            assert api_runtime.sessions.files.get(halted.id).pending_count() == 1
        finally:
            await control.aclose()

    asyncio.run(go())


def test_the_http_control_plane(
    api_runtime: Any, api_server: BackgroundServer, tmp_path: Path
) -> None:
    person = _person_with_repo(
        api_runtime, tmp_path, "hank", "Hank Http", "hank@example.com", "plane"
    )
    session = api_runtime.sessions.create(person.user, "plane", "claim me")

    async def go() -> None:
        control = HttpControlPlane(api_server.url, TOKEN)
        try:
            assert await control.acquire_lease(session.id, "runner-a", 30)
            assert not await control.acquire_lease(session.id, "runner-b", 30)
            job = await control.next_prompt(session.id, "runner-a")
            again = await control.next_prompt(session.id, "runner-a")  # a lost reply, retried
            assert job is not None and again is not None
            assert (job.id, job.attempt) == (again.id, again.attempt) == (1, 1)
            assert job.author.login == "hank" and job.text == "claim me"
            assert await control.renew_lease(session.id, "runner-a", 30) == "held"
            assert await control.renew_lease(session.id, "runner-b", 30) == "lost"
            context = await control.session_context(session.id)
            assert context.repo.name == "plane" and context.branch == f"nightshift/{session.id}"
            assert [s.name for s in await control.repo_specs()] == ["plane"]
            summary = await control.session_status(session.id)
            assert summary.id == session.id
            with pytest.raises(ControlPlaneError, match="no session"):
                await control.session_context("nope")
            with pytest.raises(ControlPlaneError, match="no session"):
                await control.acquire_lease("ffffffffffff", "runner-a", 30)
            with pytest.raises(ControlPlaneError, match="needs the GitHub App"):
                await control.run_job("reconcile_github")
            assert await control.release_lease(session.id, "runner-a") is False
        finally:
            await control.aclose()

    asyncio.run(go())


def test_spawning_over_http_carries_the_model(
    api_runtime: Any, api_server: BackgroundServer, tmp_path: Path
) -> None:
    """A remote worker's `spawn_session` names a model or inherits the parent's, and an
    unknown one is refused with the choices, creating nothing."""
    from workers.events import Author

    person = _person_with_repo(
        api_runtime, tmp_path, "hank", "Hank Http", "hank@example.com", "plane"
    )
    parent = api_runtime.sessions.create(person.user, "plane", "parent", model="openai:fake-model")
    author = Author(id=person.user.id, login="hank", name="Hank Http", email="hank@example.com")

    async def go() -> tuple[str, str]:
        control = HttpControlPlane(api_server.url, TOKEN)
        try:
            inherited = await control.spawn_session(parent.id, None, "child one", author)
            named = await control.spawn_session(
                parent.id, None, "child two", author, "openai:fake-model"
            )
            with pytest.raises(ControlPlaneError, match="choose one of: openai:fake-model"):
                await control.spawn_session(parent.id, None, "child three", author, "openai:x")
            context = await control.session_context(named)
            assert context.model == "openai:fake-model"
            return inherited, named
        finally:
            await control.aclose()

    inherited, named = asyncio.run(go())
    assert api_runtime.sessions.get(inherited).model == "openai:fake-model"
    assert api_runtime.sessions.get(named).model == "openai:fake-model"
    assert api_runtime.sessions.query(parent_id=parent.id)[1] == 2


def test_an_unreachable_control_plane_is_reported_after_retrying() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go() -> None:
        control = HttpControlPlane(f"http://127.0.0.1:{port}", TOKEN, retry_for=0.3)
        try:
            with pytest.raises(ControlPlaneUnavailable, match="unavailable"):
                await control.renew_lease("s", "r", 30)
        finally:
            await control.aclose()

    asyncio.run(go())
    assert os.environ.get("NIGHTSHIFT_WORKER_TOKEN") is None


class _Counting(httpx.AsyncBaseTransport):
    """A real HTTP transport that remembers the paths it was asked for."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_lease_renewals_of_one_tick_go_as_one_request(
    api_runtime: Any, api_server: BackgroundServer, tmp_path: Path
) -> None:
    """Heartbeats that arrive together are one request and one statement; each runner gets
    its own answer (held, lost, stop)."""
    person = _person_with_repo(
        api_runtime, tmp_path, "rena", "Rena Renew", "rena@example.com", "renew"
    )
    ids = [api_runtime.sessions.create(person.user, "renew", f"task {n}").id for n in range(3)]
    transport = _Counting()

    async def go() -> list[str]:
        control = HttpControlPlane(api_server.url, TOKEN, transport=transport)
        try:
            for sid in ids:
                assert await control.acquire_lease(sid, f"runner-{sid}", 30)
            api_runtime.sessions.stop(person.user, ids[2])
            transport.paths.clear()
            statements = api_runtime.runners.leases.statements
            states = await asyncio.gather(
                *(control.renew_lease(sid, f"runner-{sid}", 30) for sid in ids),
                control.renew_lease(ids[0], "someone-else", 30),
                control.renew_lease("ffffffffffff", "runner-x", 30),
            )
            assert api_runtime.runners.leases.statements == statements + 1
            return list(states)
        finally:
            await control.aclose()

    assert asyncio.run(go()) == ["held", "held", "stop", "lost", "lost"]
    assert transport.paths == ["/internal/v1/leases/renew"]


def test_the_renewal_batch_route_checks_its_input(api_server: BackgroundServer) -> None:
    url = f"{api_server.url}/internal/v1/leases/renew"
    headers = {"X-Nightshift-Worker-Token": TOKEN}
    assert httpx.post(url, json={"leases": []}, timeout=30).status_code == 401
    assert httpx.post(url, json={"leases": []}, headers=headers, timeout=30).status_code == 422
    one = {"session_id": "ffffffffffff", "runner_id": "r", "ttl_s": 30}
    for bad in ({"ttl_s": 0}, {"ttl_s": -5}, {"session_id": "x" * 100}, {"runner_id": ""}):
        r = httpx.post(url, json={"leases": [{**one, **bad}]}, headers=headers, timeout=30)
        assert r.status_code == 422, bad
    r = httpx.post(url, json={"leases": [one] * 1001}, headers=headers, timeout=30)
    assert r.status_code == 422
    r = httpx.post(url, json={"leases": [one]}, headers=headers, timeout=30)
    assert r.json() == {"states": ["lost"]}


def test_the_renewal_batch_leaves_a_session_another_process_owns_to_its_own_route(
    make_settings: Any, redis_url: str, model: dict[str, Any], tmp_path: Path
) -> None:
    """Two API processes on one control DB: the batch route of the process that does not own
    a session leaves its renewal unanswered (null), and renews the sessions it owns. The
    worker then renews the unanswered one on the session's own route, which the API forwards
    to the owner (`app/api/forward.py`); with several `serve` processes that is covered by
    `tests/app/test_multiprocess.py`."""
    from app.main import create_app
    from app.runtime import build_runtime
    from app.schemas import RepoCreate

    runtimes = [
        build_runtime(
            make_settings(
                broker_url=redis_url,
                worker_token=TOKEN,
                peer_url=f"http://127.0.0.1:{port}",
                peer_secret="peer-secret-0123456789abcdef",
                **model,
            )
        )
        for port in (9, 10)  # never dialled: nothing here is forwarded
    ]
    try:
        for rt in runtimes:
            rt.start()
        person = make_person(runtimes[0], "otto", "Otto Owner", "otto@example.com")
        runtimes[0].repos.add(RepoCreate(url=str(make_repo(tmp_path, "owned"))))
        theirs = runtimes[0].sessions.create(person.user, "owned", "theirs")
        mine = runtimes[1].sessions.create(person.user, "owned", "mine")
        assert runtimes[0].runners.acquire_lease(theirs.id, "runner-t", 30)
        assert runtimes[1].runners.acquire_lease(mine.id, "runner-m", 30)
        leases = [
            {"session_id": theirs.id, "runner_id": "runner-t", "ttl_s": 30},
            {"session_id": mine.id, "runner_id": "runner-m", "ttl_s": 30},
        ]
        with BackgroundServer(create_app(runtime=runtimes[1])) as server:
            r = httpx.post(
                f"{server.url}/internal/v1/leases/renew",
                json={"leases": leases},
                headers={"X-Nightshift-Worker-Token": TOKEN},
                timeout=30,
            )
        assert r.json() == {"states": [None, "held"]}
        assert not runtimes[1].owners.holds(theirs.id)
    finally:
        for rt in runtimes:
            rt.close()
