"""What one API process accepts from another: signed forwarded requests, only a session's own
paths, and ownership leases that move only when their process is gone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.api.forward import SESSION_PATH
from app.services.peers import PeerSigner


def test_a_peer_signature_covers_method_target_and_time() -> None:
    signer = PeerSigner("peer-secret-0123456789abcdef")
    mark = signer.sign("POST", "/api/sessions/0123456789ab/prompts")
    assert signer.valid(mark, "POST", "/api/sessions/0123456789ab/prompts")
    assert not signer.valid(mark, "GET", "/api/sessions/0123456789ab/prompts")
    assert not signer.valid(mark, "POST", "/api/sessions/0123456789ab/stop")
    assert not PeerSigner("another-secret-0123456789abcdef").valid(
        mark, "POST", "/api/sessions/0123456789ab/prompts"
    )
    stamp, _, mac = mark.partition(".")
    old = int(stamp) - 120
    assert not signer.valid(f"{old}.{signer._mac(old, 'POST', '/x')}", "POST", "/x")
    for junk in ("", ".", "abc.def", "1" * 40 + "." + mac, "²." + mac):
        assert not signer.valid(junk, "POST", "/api/sessions/0123456789ab/prompts")


def test_only_a_sessions_own_paths_are_forwarded() -> None:
    for path in (
        "/api/sessions/0123456789ab",
        "/api/sessions/0123456789ab/events/stream",
        "/api/sessions/0123456789ab/stream",
        "/internal/v1/sessions/0123456789ab/next-prompt",
    ):
        assert SESSION_PATH.match(path), path
    for path in (
        "/api/sessions",
        "/api/sessions/changes",
        "/api/sessions/0123456789ab/../../internal/v1/jobs",
        "/internal/v1/jobs/reconcile_github",
        "/api/repos/0123456789ab",
        "/api/sessions/0123456789AB",
        "/api/sessions/0123456789ab%2F..",
    ):
        assert not SESSION_PATH.match(path) or ".." in path, path


def test_a_peer_url_needs_a_shared_secret(make_settings: Any) -> None:
    from app.runtime import build_runtime

    with pytest.raises(ValueError, match="NIGHTSHIFT_PEER_SECRET"):
        build_runtime(make_settings(peer_url="http://127.0.0.1:9"))


def test_a_lease_moves_only_when_its_process_is_gone_or_expired(runtime: Any, alice: Any) -> None:
    """Two `Ownership`s on one control DB: the creator holds its session; the other may take
    it only once the lease expired or the holder's process is certainly dead."""
    from sqlmodel import Session as DB

    from app.models import SessionOwner
    from app.schemas import RepoCreate
    from app.services.ownership import Ownership
    from tests.factories import make_repo

    repo = make_repo(runtime.settings.data_dir.parent, "owned")
    runtime.repos.add(RepoCreate(url=str(repo)))
    session = runtime.sessions.create(alice.user, "owned", "hold it")
    first = Ownership(runtime.engine, "http://127.0.0.1:1", ttl=60)
    second = Ownership(runtime.engine, "http://127.0.0.1:2", ttl=60)
    assert first.owner("ffffffffffff") is None  # no such session: nothing is claimed
    assert first.owner(session.id) == first.owner_row(session.id)
    assert first.holds(session.id) and first.owner(session.id).mine  # type: ignore[union-attr]
    held = second.owner(session.id)
    assert held is not None and not held.mine and held.peer_url == "http://127.0.0.1:1"
    assert second.claim_all([session.id]) == set()
    # A holder whose pid is not running on this host: taken at once, before its expiry.
    with DB(runtime.engine) as db:
        row = db.get(SessionOwner, session.id)
        assert row is not None
        row.process_id = row.process_id.rsplit("-", 2)[0] + "-999999999-dead"
        db.add(row)
        db.commit()
    assert second.claim_all([session.id]) == {session.id}
    assert second.holds(session.id)
    # The first one's heartbeat learns it lost the session. An expired lease of a process
    # that runs on this host stays with it (a late heartbeat) until three TTLs have passed.
    first.renew()
    assert not first.holds(session.id)

    def expire(seconds_ago: float) -> None:
        with DB(runtime.engine) as db:
            row = db.get(SessionOwner, session.id)
            assert row is not None
            row.expires_at = time.time() - seconds_ago
            db.add(row)
            db.commit()

    expire(1)
    assert not first.owner(session.id).mine  # type: ignore[union-attr]
    expire(2 * 60 + 1)
    assert first.owner(session.id).mine  # type: ignore[union-attr]
    second.renew()
    assert not second.holds(session.id)
    first.release()
    assert first.owner_row(session.id) is None


def _bound() -> Any:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _watch_changes(url: str, token: str, out: list[str]) -> None:
    import json

    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", url + "/api/sessions/changes", headers=headers, timeout=60) as r:
        out.append("open")
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[len("data: ") :])["id"])


def test_writes_that_start_away_from_the_owner_are_done_by_the_owner(
    make_settings: Any, openai_fake: Any, tmp_path: Any
) -> None:
    """Two API processes' runtimes on one data dir: a follow-up, an event and a stop that
    start on the process that does not own the session (as Slack, GitHub or a PR merge
    would) are sent to the owner, which stores and publishes them; the other never does.
    The other's live list (`/api/sessions/changes`) shows the owner's session changing."""
    import threading

    from app.main import create_app
    from app.runtime import build_runtime
    from app.schemas import RepoCreate
    from tests.factories import make_person, make_repo, wait_for
    from tests.fakes.llm import Turn
    from tests.fakes.server import BackgroundServer
    from workers.events import Notice

    gate = threading.Event()
    openai_fake.script(
        "hold here", Turn(text="Waiting.", gate=gate), Turn.tool("finish", summary="ok")
    )
    socks = [_bound(), _bound()]
    runtimes = []
    for sock in socks:
        settings = make_settings(
            model="openai:fake-model",
            openai_base_url=openai_fake.url,
            openai_api_key="sk-test-fake-key-0123456789abcdef",
            peer_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            peer_secret="peer-secret-0123456789abcdef",
        )
        runtimes.append(build_runtime(settings))
    owner, other = runtimes
    seen: dict[str, list[str]] = {"owner": [], "other": []}
    owner.hub.handlers.append(lambda _sid, event: seen["owner"].append(event.type))
    other.hub.handlers.append(lambda _sid, event: seen["other"].append(event.type))
    servers = []
    try:
        for rt, sock in zip(runtimes, socks, strict=True):
            rt.start()
            servers.append(BackgroundServer(create_app(runtime=rt), sock=sock).start())
        pat = make_person(owner, "pat", "Pat Peer", "pat@example.com")
        owner.repos.add(RepoCreate(url=str(make_repo(tmp_path, "peer"))))
        listed: list[str] = []  # the live list on the other process sees the owner's changes
        watcher = threading.Thread(
            target=_watch_changes, args=(servers[1].url, pat.token, listed), daemon=True
        )
        watcher.start()
        wait_for(lambda: listed, 10, "the changes stream to open")
        session = owner.sessions.create(pat.user, "peer", "hold here")
        wait_for(lambda: owner.sessions.get(session.id).status == "running", 30, "running")
        wait_for(lambda: session.id in listed, 30, "the change on the other process")
        assert other.peers.local(session.id) == owner.settings.peer_url

        other.hub.publish(session.id, Notice(message="from afar"))
        prompt = other.sessions.add_prompt(pat.user, session.id, "and then this", "slack")
        assert prompt.text == "and then this" and prompt.state == "queued"
        other.sessions.stop(pat.user, session.id)
        gate.set()
        wait_for(lambda: owner.sessions.get(session.id).status == "stopped", 30, "stopped")

        assert "notice" in seen["owner"] and "prompt_queued" in seen["owner"]
        assert seen["other"] == []  # it wrote nothing of a session it does not own
        events = owner.sessions.events(session.id)
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert any(e.type == "notice" and e.message == "from afar" for e in events)  # type: ignore[union-attr]
        assert [p.text for p in owner.sessions.prompts(session.id)] == [
            "hold here",
            "and then this",
        ]
        assert owner.owners.holds(session.id) and not other.owners.holds(session.id)
    finally:
        gate.set()
        for server in servers:
            server.stop()
        for rt in runtimes:
            rt.close()


def test_peer_routes_need_a_signature(make_settings: Any, openai_fake: Any) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.runtime import build_runtime
    from app.services.peers import PEER_HEADER, PeerSigner

    alone = build_runtime(make_settings())
    try:
        with TestClient(create_app(runtime=alone)) as client:
            path = "/internal/v1/peers/sessions/0123456789ab/stop"
            assert client.post(path, json={"user_id": 1}).status_code == 404
    finally:
        alone.close()
    secret = "peer-secret-0123456789abcdef"
    rt = build_runtime(make_settings(peer_url="http://127.0.0.1:9", peer_secret=secret))
    try:
        with TestClient(create_app(runtime=rt)) as client:
            path = "/internal/v1/peers/sessions/0123456789ab/stop"
            assert client.post(path, json={"user_id": 1}).status_code == 401
            forged = PeerSigner("not-the-secret-0123456789abcdef").sign("POST", path)
            answer = client.post(path, json={"user_id": 1}, headers={PEER_HEADER: forged})
            assert answer.status_code == 401
            other = PeerSigner(secret).sign("POST", path.replace("stop", "prompts"))
            answer = client.post(path, json={"user_id": 1}, headers={PEER_HEADER: other})
            assert answer.status_code == 401
            signed = PeerSigner(secret).sign("POST", path)
            answer = client.post(path, json={"user_id": 1}, headers={PEER_HEADER: signed})
            assert answer.status_code == 404, answer.text  # through: no such session here
            assert "/internal/v1/peers" not in str(client.get("/openapi.json").json())
    finally:
        rt.close()


def test_the_client_to_the_peers_is_closed_when_the_app_shuts_down() -> None:
    """The forwarding middleware's connections to other processes end with the app's
    lifespan, on the loop that opened them (no socket or loop left behind at shutdown)."""
    import asyncio

    from app.api.forward import OwnerRouter

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    router = OwnerRouter(app, lambda: None, PeerSigner("s" * 32))

    async def lifespan() -> tuple[bool, list[str]]:
        client = router.client()  # as the first forwarded request would open it
        incoming: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            incoming.put_nowait({"type": kind})
        sent: list[str] = []

        async def send(message: dict[str, str]) -> None:
            sent.append(message["type"])

        await router({"type": "lifespan"}, incoming.get, send)
        return client.is_closed, sent

    closed, sent = asyncio.run(lifespan())
    assert closed
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert router._client is None
