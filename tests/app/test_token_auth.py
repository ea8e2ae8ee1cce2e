"""API tokens: checked against the control DB, then trusted for a bounded time (revocation in
the database takes effect within `token_cache_seconds`)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session as DB

from app.errors import Unauthorized
from app.models import ApiToken
from app.services.users import Users


def _revoke_all(users: Users) -> None:
    with DB(users.engine) as db:
        db.exec(update(ApiToken).values(revoked_at=time.time()))  # type: ignore[call-overload]
        db.commit()


@pytest.mark.parametrize("cache_seconds", [0.0, 3600.0])
def test_a_revoked_token_stops_working_once_its_check_is_stale(
    runtime: Any, cache_seconds: float
) -> None:
    users = Users(runtime.engine, token_cache_seconds=cache_seconds)
    person = users.upsert("carol", "Carol", "carol@example.com")
    token = users.create_token(person, "test")
    assert users.authenticate(token).login == "carol"
    with pytest.raises(Unauthorized):
        users.authenticate(token + "x")
    _revoke_all(users)
    if cache_seconds:
        # Checked a moment ago: trusted until the check is `cache_seconds` old.
        assert users.authenticate(token).login == "carol"
        # A fresh process (or the check gone stale) asks the database again.
        with pytest.raises(Unauthorized):
            Users(runtime.engine, token_cache_seconds=cache_seconds).authenticate(token)
    else:
        with pytest.raises(Unauthorized):
            users.authenticate(token)
