"""What one API process accepts from another: signed forwarded requests, only a session's own
paths, and ownership leases that move only when their process is gone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.api.forward import SESSION_PATH, PeerSigner


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


def test_a_peer_url_needs_a_shared_secret_and_the_embedded_mode(make_settings: Any) -> None:
    from app.runtime import build_runtime

    with pytest.raises(ValueError, match="NIGHTSHIFT_PEER_SECRET"):
        build_runtime(make_settings(peer_url="http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="embedded mode only"):
        build_runtime(
            make_settings(
                peer_url="http://127.0.0.1:9",
                peer_secret="peer-secret-0123456789abcdef",
                broker_url="redis://127.0.0.1:6379/15",
                worker_token="worker-token-0123456789abcdef",
            )
        )


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
    # The first one's heartbeat learns it lost the session; an expired lease moves too.
    first.renew()
    assert not first.holds(session.id)
    with DB(runtime.engine) as db:
        row = db.get(SessionOwner, session.id)
        assert row is not None
        row.expires_at = time.time() - 1
        db.add(row)
        db.commit()
    assert first.owner(session.id).mine  # type: ignore[union-attr]
    second.renew()
    assert not second.holds(session.id)
    first.release()
    assert first.owner_row(session.id) is None
