"""Distributed mode end to end: `nightshift serve`, Celery workers and beat as processes on a
private Redis, PostgreSQL as the control DB. Tests marked `both` run the same scenario under
the in-process dispatcher too: the task functions are the same."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import Cluster, owner_pid
from tests.factories import ApiClient, Person, git, make_repo, wait_for
from tests.fakes.llm import Call, ScriptBook, Turn
from tests.workers.conftest import cluster_logs

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


@dataclass
class Deployment:
    mode: str
    api: ApiClient
    deliver: Callable[[str], Callable[[], None]]
    """Deliver one more `run_session` task; returns a function that waits until it ran."""
    run_jobs: Callable[[str, int], None]
    """Run a scheduled job this many times at once (overlapping schedules)."""
    logs: Callable[[], str]


def _unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


@pytest.fixture(params=["embedded", "celery"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    if request.param == "embedded":
        from workers.runner import run_session
        from workers.scheduled import run_job

        runtime = request.getfixturevalue("runtime")
        server = request.getfixturevalue("server")
        alice: Person = request.getfixturevalue("alice")

        def deliver(session_id: str) -> Callable[[], None]:
            future = runtime.executor.submit(lambda: run_session(session_id, runtime.deps))
            return lambda: future.result(30)

        def run_jobs(name: str, times: int) -> None:
            async def overlapping() -> None:
                await asyncio.gather(*(run_job(runtime.jobs, name) for _ in range(times)))

            runtime.executor.submit(overlapping).result(60)

        base_url, logs = server.url, lambda: ""
    else:
        cluster: Cluster = request.getfixturevalue("cluster")
        alice = cluster.person("alice", "Alice Example", "alice@example.com")
        celery = cluster.celery()

        def deliver(session_id: str) -> Callable[[], None]:
            from workers.wire import RUN_SESSION

            task_id = celery.send_task(RUN_SESSION, args=[session_id]).id
            return lambda: wait_for(
                lambda: f"[{task_id}] succeeded" in cluster_logs(cluster),
                30,
                f"task {task_id} to run",
            )

        def run_jobs(name: str, times: int) -> None:
            _two_beats(cluster, name, times)

        base_url = cluster.url

        def logs() -> str:
            return cluster_logs(cluster)

    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
    ) as http:
        yield Deployment(request.param, ApiClient(http, base_url, alice), deliver, run_jobs, logs)


def _two_beats(cluster: Cluster, job: str, seconds: int) -> None:
    """Two `nightshift beat` processes firing every second for a while: overlapping schedules."""
    assert job == "build_images"
    offsets = {n: len(cluster.log_text(f"beat{n}")) for n in (1, 2)}
    beats = [
        cluster._spawn(
            f"beat{n}",
            ["beat"],
            NIGHTSHIFT_DATA_DIR=str(cluster.root / f"beat{n}"),
            NIGHTSHIFT_IMAGE_INTERVAL="1",
            NIGHTSHIFT_POOL_INTERVAL="3600",
            NIGHTSHIFT_RECONCILE_INTERVAL="3600",
        )
        for n in (1, 2)
    ]
    try:
        wait_for(
            lambda: all(
                cluster.log_text(f"beat{n}")[offsets[n] :].count("Sending due task build_images")
                >= seconds
                for n in (1, 2)
            ),
            30 + seconds,
            "both beats to send build_images repeatedly",
        )
    finally:
        from tests.cluster import _terminate

        for beat in beats:
            _terminate(beat)
    # Let what the beats queued run to the end before anyone counts images.
    import redis

    broker = redis.Redis.from_url(cluster.redis.url())
    try:
        wait_for(lambda: broker.llen("nightshift.jobs") == 0, 60, "the jobs queue to drain")
    finally:
        broker.close()
    time.sleep(1.0)


def _ready_images(api: ApiClient, repo: str) -> list[dict[str, Any]]:
    r = api.http.get("/api/images", params={"repo": repo})
    assert r.status_code == 200, r.text
    return [i for i in r.json() if i["status"] == "ready"]


def _write_and_finish(path: str, content: str, title: str) -> list[Turn]:
    return [
        Turn.tool("write_file", "Writing it.", path=path, content=content),
        Turn.tool("finish", summary=f"Wrote {path}.", title=title),
    ]


def _assert_contiguous(events: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in events]
    assert ids == list(range(1, len(ids) + 1)), ids


# ---------------------------------------------------------------- both dispatchers


def test_session_runs_end_to_end(
    deployment: Deployment, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    name = _unique("e2e")
    repo = make_repo(tmp_path, name)
    deployment.api.add_repo(repo)
    openai_fake.script("distributed hello", *_write_and_finish("HELLO.md", "hi\n", "Say hello"))
    session = deployment.api.create(name, "distributed hello")
    done = deployment.api.wait_status(session["id"], "finished", "failed", timeout=60)
    events = deployment.api.events(session["id"])
    assert done["status"] == "finished", (events, deployment.logs())
    branch = f"nightshift/{session['id']}"
    assert git(repo, "log", "-1", "--format=%an <%ae>", branch).strip() == (
        "Alice Example <alice@example.com>"
    )
    assert git(repo, "show", f"{branch}:HELLO.md") == "hi\n"
    assert done["pr_number"] == 1 and done["pr_state"] == "open"
    _assert_contiguous(events)
    types = [e["type"] for e in events]
    for expected in ("sandbox_ready", "tool_call", "commit_created", "branch_pushed", "pr_opened"):
        assert types.count(expected) == (2 if expected == "tool_call" else 1), types
    assert types[-1] == "status" and events[-1]["status"] == "finished"
    health = deployment.api.http.get("/healthz").json()
    if deployment.mode == "embedded":
        assert health["mode"] == "embedded" and health["event_bus"] is None
    else:
        assert (health["mode"], health["database"]) == ("distributed", "postgresql")
        assert health["event_bus"] == "ok"
    if deployment.mode == "celery":
        # The worker, a separate process, ran it: the API only dispatched and persisted.
        assert "nightshift.run_session[" in deployment.logs()
        assert session["id"] in deployment.logs()


def test_duplicate_run_session_delivery_runs_once(
    deployment: Deployment, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    name = _unique("dup")
    repo = make_repo(tmp_path, name)
    deployment.api.add_repo(repo)
    gate = threading.Event()
    openai_fake.script(
        "only once",
        Turn.tool("write_file", path="ONCE.md", content="once\n"),
        Turn(text="Thinking.", calls=[Call("list_files", {"path": "."})], gate=gate),
        Turn.tool("finish", summary="done", title="Once"),
    )
    session = deployment.api.create(name, "only once please")
    wait_for(lambda: len(openai_fake.requests) >= 2, 30, "the run to reach its second turn")
    # Two more deliveries while the first runner holds the lease: both exit at once.
    for wait in [deployment.deliver(session["id"]) for _ in range(2)]:
        wait()
    gate.set()
    done = deployment.api.wait_status(session["id"], "finished", "failed", timeout=60)
    assert done["status"] == "finished", deployment.logs()
    wait_for(
        lambda: deployment.api.events(session["id"])[-1].get("status") == "finished", 10, "the end"
    )
    before = deployment.api.events(session["id"])
    # A late duplicate, after the work is done, changes nothing.
    deployment.deliver(session["id"])()
    after = deployment.api.events(session["id"])
    assert after == before
    types = [e["type"] for e in after]
    assert types.count("prompt_started") == 1 and types.count("branch_pushed") == 1
    assert {e["attempt"] for e in after} == {1}
    assert len(openai_fake.requests) == 3  # one model call per turn, no more
    _assert_contiguous(after)


def test_overlapping_schedules_build_one_image_per_repo_and_tip(
    deployment: Deployment, tmp_path: Path
) -> None:
    name = _unique("img")
    repo = make_repo(tmp_path, name)
    deployment.api.add_repo(repo)  # registering a repo queues its first build too
    deployment.run_jobs("build_images", 3)
    first = wait_for(lambda: _ready_images(deployment.api, name), 60, "the first image")
    assert [i["sha"] for i in first] == [git(repo, "rev-parse", "main").strip()], first
    # The base branch moves: the next round builds exactly one new image.
    (repo / "NEW.md").write_text("new\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-qm", "tip 2")
    deployment.run_jobs("build_images", 3)
    images = wait_for(
        lambda: (i := _ready_images(deployment.api, name)) and len(i) >= 2 and i, 60, "image 2"
    )
    time.sleep(1.0)  # a duplicate build would land about now
    images = _ready_images(deployment.api, name)
    assert sorted(i["sha"] for i in images) == sorted(
        [git(repo, "rev-parse", "main~1").strip(), git(repo, "rev-parse", "main").strip()]
    ), images
    builds = deployment.api.http.get("/api/images", params={"repo": name}).json()
    assert all(b["status"] != "failed" for b in builds), builds


# ---------------------------------------------------------------- distributed only


def test_kill_9_of_the_worker_mid_run_resumes_on_another_worker(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    alice = cluster.person("alice", "Alice Example", "alice@example.com")
    api = ApiClient(
        httpx.Client(
            timeout=30, base_url=cluster.url, headers={"Authorization": f"Bearer {alice.token}"}
        ),
        cluster.url,
        alice,
    )
    name = _unique("kill")
    repo = make_repo(tmp_path, name)
    api.add_repo(repo)
    openai_fake.script(
        "survive a crash",
        Turn.tool("write_file", "First a file.", path="SURVIVED.md", content="yes\n"),
        Turn.tool("run", "Then a slow command.", command="sleep 4; echo once >> RAN.log"),
        Turn.tool("finish", summary="Survived.", title="Survive"),
    )
    session = api.create(name, "survive a crash")
    # The worker dies while the slow command runs: its call was announced, its result never.
    wait_for(
        lambda: any(
            e["type"] == "tool_call" and e["name"] == "run" for e in api.events(session["id"])
        ),
        60,
        "the slow command to start",
    )
    owner = cluster.lease_owner(session["id"])
    assert owner is not None
    killed = cluster.kill_worker_pid(owner_pid(owner))
    done = api.wait_status(session["id"], "finished", "failed", timeout=90)
    events = api.events(session["id"])
    assert done["status"] == "finished", (events, cluster_logs(cluster))
    _assert_contiguous(events)
    calls = [e for e in events if e["type"] == "tool_call"]
    results = [e for e in events if e["type"] == "tool_result"]
    # Each call is announced once and returns once; the one cut short returns in attempt 2.
    assert [c["name"] for c in calls] == ["write_file", "run", "finish"], calls
    assert [r["call_id"] for r in results] == [c["call_id"] for c in calls]
    write, run, finish = calls
    assert (write["attempt"], run["attempt"], finish["attempt"]) == (1, 1, 2)
    assert [r["attempt"] for r in results] == [1, 2, 2]
    assert not results[1]["is_error"], results[1]
    # Attempt 2 went on at turn 3: turns 1 and 2 were not asked again.
    steps = [(e["attempt"], e["step"]) for e in events if e["type"] == "model_request"]
    assert steps == [(1, 1), (1, 2), (2, 3)], steps
    resumed = [e for e in events if e["type"] == "run_resumed"]
    assert len(resumed) == 1 and resumed[0]["attempt"] == 2, resumed
    assert resumed[0]["from_turn"] == 3 and resumed[0]["rerun"] == [run["call_id"]]
    assert resumed[0]["unsaved"] == []
    assert events.index(resumed[0]) < events.index(results[1])
    # The user's message and the model's turns are stored once.
    messages = [e["message"]["role"] for e in events if e["type"] == "message"]
    assert messages == ["user", "assistant", "assistant", "assistant"], messages
    # The model saw the whole conversation once more, and a note of what happened.
    last = openai_fake.requests[-1]
    roles = [m["role"] for m in last["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"], roles
    assert "stopped unexpectedly after your turn 2" in last["messages"][0]["content"]
    assert len(openai_fake.requests) == 3
    # The second attempt started from the checkpoint after turn 1, on another worker.
    ready = [e for e in events if e["type"] == "sandbox_ready"]
    assert [r["mode"] for r in ready][1:] == ["snapshot"], ready
    assert ready[0]["sandbox_id"] != ready[1]["sandbox_id"]
    survivors = [n for n in cluster.workers if n != killed]
    assert any(session["id"] in cluster.log_text(n) for n in survivors)
    # One branch and one PR, with the first turn's file and the command's effect once.
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/nightshift/").split()
    assert refs == [f"refs/heads/nightshift/{session['id']}"]
    assert git(repo, "show", f"nightshift/{session['id']}:SURVIVED.md") == "yes\n"
    assert git(repo, "show", f"nightshift/{session['id']}:RAN.log") == "once\n"
    pulls = api.http.get(f"/api/repos/{name}/pulls").json()
    assert len(pulls) == 1 and pulls[0]["head"] == f"nightshift/{session['id']}"
    api.http.close()


def test_a_worker_stopped_mid_run_hands_its_session_back(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """SIGTERM (a deploy): the runner gives its lease back and releases its sandbox; another
    worker finishes the prompt."""
    import signal

    alice = cluster.person("alice", "Alice Example", "alice@example.com")
    headers = {"Authorization": f"Bearer {alice.token}"}
    name = _unique("handback")
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as http:
        api = ApiClient(http, cluster.url, alice)
        repo = make_repo(tmp_path, name)
        api.add_repo(repo)
        gate = threading.Event()
        openai_fake.script(
            "hand it back",
            Turn.tool("write_file", path="BACK.md", content="back\n"),
            Turn(text="Mid-thought.", calls=[Call("list_files", {"path": "."})], gate=gate),
            Turn.tool("finish", summary="done", title="Back"),
        )
        session = api.create(name, "hand it back")
        wait_for(lambda: len(openai_fake.requests) >= 2, 30, "the second turn")
        owner = cluster.lease_owner(session["id"])
        assert owner is not None
        pid = owner_pid(owner)
        leaving = next(n for n, p in cluster.workers.items() if p.pid == pid)
        cluster.workers[leaving].send_signal(signal.SIGTERM)
        # The runner releases its lease on the way out (no waiting for it to lapse).
        wait_for(lambda: cluster.lease_owner(session["id"]) != owner, 20, "the lease released")
        cluster.workers.pop(leaving).wait(30)
        gate.set()
        done = api.wait_status(session["id"], "finished", "failed", timeout=60)
        assert done["status"] == "finished", cluster_logs(cluster)
        events = api.events(session["id"])
        _assert_contiguous(events)
        assert {e["attempt"] for e in events if e["type"] == "prompt_started"} == {1, 2}
        assert git(repo, "show", f"nightshift/{session['id']}:BACK.md") == "back\n"
        assert "handing 1 session(s) back" in cluster.log_text(leaving)
    # Its sandbox was released, not left mounted.
    sandboxes = cluster.worker_dir / "workers" / leaving / "sandboxes"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(sandboxes) not in mounts


def test_a_follow_up_wakes_the_idle_remote_runner(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """A runner keeping its sandbox for follow-ups takes a new prompt at once (pub/sub nudge),
    on the same sandbox, instead of at its next periodic look at the queue."""
    for name in list(cluster.workers):
        cluster.stop_worker(name)
    cluster.start_worker("idle", NIGHTSHIFT_IDLE_SECONDS="120")
    try:
        alice = cluster.person("alice", "Alice Example", "alice@example.com")
        headers = {"Authorization": f"Bearer {alice.token}"}
        name = _unique("idle")
        with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as http:
            api = ApiClient(http, cluster.url, alice)
            api.add_repo(make_repo(tmp_path, name))
            openai_fake.script("first part", *_write_and_finish("ONE.md", "1\n", "One"))
            openai_fake.script("second part", *_write_and_finish("TWO.md", "2\n", "Two"))
            session = api.create(name, "first part")
            api.wait_status(session["id"], "idle", timeout=60)
            r = http.post(f"/api/sessions/{session['id']}/prompts", json={"text": "second part"})
            assert r.status_code == 202
            # Well before the runner's own periodic check of its queue (30 s).
            wait_for(
                lambda: sum(e["type"] == "prompt_started" for e in api.events(session["id"])) == 2,
                15,
                "the follow-up to start",
            )
            ready = [e for e in api.events(session["id"]) if e["type"] == "sandbox_ready"]
            assert len(ready) == 1  # the same sandbox served both prompts
            http.post(f"/api/sessions/{session['id']}/stop")
    finally:
        cluster.stop_worker("idle")


def test_a_runner_whose_idle_time_ran_out_asks_the_queue_no_more(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """An idle runner whose time is up goes without a last look at the queue (the lease's
    release reports a prompt queued meanwhile), and a follow-up after that still runs."""
    for name in list(cluster.workers):
        cluster.stop_worker(name)
    cluster.start_worker("brief", NIGHTSHIFT_IDLE_SECONDS="1")
    try:
        alice = cluster.person("alice", "Alice Example", "alice@example.com")
        name = _unique("brief")
        with httpx.Client(
            base_url=cluster.url, headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
        ) as http:
            api = ApiClient(http, cluster.url, alice)
            api.add_repo(make_repo(tmp_path, name))
            openai_fake.script("look once", Turn.tool("finish", summary="Looked."))
            openai_fake.script("look again", Turn.tool("finish", summary="Looked again."))
            session_id = api.create(name, "look once")["id"]
            api.wait_status(session_id, "finished", timeout=60)
            asks = f"/internal/v1/sessions/{session_id}/next-prompt"
            # One look after the prompt, none when the idle second ran out.
            assert cluster.log_text("api").count(asks) == 1
            r = http.post(f"/api/sessions/{session_id}/prompts", json={"text": "look again"})
            assert r.status_code == 202
            prompts = f"/api/sessions/{session_id}/prompts"
            wait_for(
                lambda: [p["state"] for p in http.get(prompts).json()] == ["done", "done"],
                60,
                "the follow-up to run",
            )
    finally:
        cluster.stop_worker("brief")


def test_a_prompt_that_changed_nothing_reads_no_co_authors_from_the_api(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """Who edited through the IDE (the co-authors of a commit) is read from the API only when
    there is a commit to make: a prompt that changed nothing costs one control call less."""
    alice = cluster.person("alice", "Alice Example", "alice@example.com")
    name = _unique("readonly")
    with httpx.Client(
        base_url=cluster.url, headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
    ) as http:
        api = ApiClient(http, cluster.url, alice)
        api.add_repo(make_repo(tmp_path, name))
        openai_fake.script("just look", Turn.tool("finish", summary="Looked; nothing to do."))
        openai_fake.script("write one", *_write_and_finish("ONE.md", "1\n", "One"))
        looked = api.create(name, "just look")["id"]
        wrote = api.create(name, "write one")["id"]
        for session_id in (looked, wrote):
            api.wait_status(session_id, "finished", timeout=60)
        assert any(e["type"] == "commit_created" for e in api.events(wrote))
        assert not any(e["type"] == "commit_created" for e in api.events(looked))
    log = cluster.log_text("api")
    assert f"/internal/v1/sessions/{wrote}/stored-events" in log  # the log names each request
    assert f"/internal/v1/sessions/{looked}/stored-events" not in log
    assert f"/internal/v1/sessions/{looked}/start" in log


def test_stop_reaches_a_remote_runner_through_the_nudge(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    alice = cluster.person("alice", "Alice Example", "alice@example.com")
    headers = {"Authorization": f"Bearer {alice.token}"}
    name = _unique("stop")
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as http:
        api = ApiClient(http, cluster.url, alice)
        api.add_repo(make_repo(tmp_path, name))
        gate = threading.Event()
        openai_fake.script("stop me", Turn(text="Forever.", gate=gate))
        session = api.create(name, "stop me now")
        wait_for(lambda: openai_fake.requests, 30, "the model call")
        assert http.post(f"/api/sessions/{session['id']}/stop").status_code == 200
        stopped = api.wait_status(session["id"], "stopped", timeout=20)
        gate.set()
        assert stopped["status"] == "stopped"
        assert f"stop requested for {session['id']}" in cluster_logs(cluster)
        reasons = [e.get("reason") for e in api.events(session["id"]) if e["type"] == "status"]
        assert reasons[-1] == "stopped on request"


@pytest.mark.parametrize("redis_keeps", [True, False], ids=["aof", "lost"])
def test_redis_restart_with_prompts_queued_runs_each_once(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path, redis_keeps: bool
) -> None:
    import redis

    alice = cluster.person("alice", "Alice Example", "alice@example.com")
    headers = {"Authorization": f"Bearer {alice.token}"}
    name = _unique("restart")
    repo = make_repo(tmp_path, name)
    for name_ in list(cluster.workers):
        cluster.stop_worker(name_)
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as http:
        api = ApiClient(http, cluster.url, alice)
        api.add_repo(repo)
        ids = []
        for n in range(3):
            openai_fake.script(f"queued {n}", *_write_and_finish(f"Q{n}.md", f"{n}\n", f"Q{n}"))
            ids.append(api.create(name, f"queued {n}")["id"])
        broker = redis.Redis.from_url(cluster.redis.url())
        # Dispatch is sent after the answer (`CeleryDispatcher`): the tasks follow shortly.
        wait_for(lambda: broker.llen("nightshift.sessions") == 3, 10, "three tasks queued")
        time.sleep(0.3)
        assert broker.llen("nightshift.sessions") == 3  # one each, no more
        broker.close()
        cluster.redis.restart(keep_data=redis_keeps)
        cluster.start_worker("w1", "w2")
        for session_id in ids:
            done = api.wait_status(session_id, "finished", "failed", timeout=60)
            assert done["status"] == "finished", cluster_logs(cluster)
        time.sleep(1.5)  # any duplicate delivery would have run by now (reaper every 0.5s)
        for n, session_id in enumerate(ids):
            events = api.events(session_id)
            _assert_contiguous(events)
            types = [e["type"] for e in events]
            assert types.count("prompt_started") == 1 and types.count("branch_pushed") == 1
            assert {e["attempt"] for e in events} == {1}
            assert git(repo, "show", f"nightshift/{session_id}:Q{n}.md") == f"{n}\n"
    assert len(openai_fake.requests) == 6  # two turns per prompt, each run once


def test_api_restart_resumes_the_event_streams_without_duplicates(
    cluster: Cluster, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    alice = cluster.person("alice", "Alice Example", "alice@example.com")
    headers = {"Authorization": f"Bearer {alice.token}"}
    name = _unique("apirestart")
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as http:
        api = ApiClient(http, cluster.url, alice)
        repo = make_repo(tmp_path, name)
        api.add_repo(repo)
        gate = threading.Event()
        openai_fake.script(
            "outlive the api",
            Turn.tool("write_file", path="A.md", content="a\n"),
            Turn(
                text="While the API is away. " * 20,
                calls=[Call("list_files", {"path": "."})],
                gate=gate,
            ),
            Turn.tool("finish", summary="done", title="Outlive"),
        )
        session = api.create(name, "outlive the api")
        wait_for(lambda: len(openai_fake.requests) >= 2, 30, "the second turn")
        cluster.stop_api()
        gate.set()  # the worker goes on publishing into Redis while the API is down
        wait_for(lambda: len(openai_fake.requests) >= 3, 30, "the third turn, API down")
        cluster.start_api()
        done = api.wait_status(session["id"], "finished", "failed", timeout=90)
        events = api.events(session["id"])
        assert done["status"] == "finished", cluster_logs(cluster)
        _assert_contiguous(events)
        texts = [e["text"] for e in events if e["type"] == "text_delta"]
        assert "".join(texts).count("While the API is away.") == 20
        assert [e["type"] for e in events].count("prompt_finished") == 1
        assert {e["attempt"] for e in events} == {1}
