"""People: the local user, API tokens (stored as SHA-256 hashes) and lookups."""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
import threading
import time
from collections import OrderedDict

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import select

from app.errors import Invalid, Unauthorized
from app.models import ApiToken, User
from workers.events import Author

TOKEN_PREFIX = "ns_"  # noqa: S105  (a prefix, not a secret)
_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")

TOKEN_CACHE_SECONDS = 10.0
"""How long a checked API token is trusted without asking the control DB again: a token
revoked in the database stops working within this time (see README, "API tokens")."""
_TOKEN_CACHE_SIZE = 4096


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def author_of(user: User) -> Author:
    assert user.id is not None
    return Author(id=user.id, login=user.login, name=user.name, email=user.email)


def git_identity() -> tuple[str, str]:
    """The local git identity (`git config user.name` / `user.email`)."""

    def read(key: str) -> str:
        out = subprocess.run(
            ["git", "config", "--get", key], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    name, email = read("user.name"), read("user.email")
    if not name or not email:
        raise Invalid(
            "NIGHTSHIFT_AUTH=local takes your identity from git, but git has none: run "
            "`git config --global user.name 'Your Name'` and "
            "`git config --global user.email you@example.com`"
        )
    return name, email


class Users:
    def __init__(self, engine: Engine, token_cache_seconds: float = TOKEN_CACHE_SECONDS) -> None:
        self.engine = engine
        self.token_cache_seconds = token_cache_seconds
        # Every request is authenticated; a token checked a moment ago needs no query.
        self._tokens: OrderedDict[str, tuple[float, User]] = OrderedDict()
        self._tokens_lock = threading.Lock()

    def upsert(self, login: str, name: str, email: str) -> User:
        if not _EMAIL_RE.match(email):
            raise Invalid(f"{email!r} is not an email address")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", login):
            raise Invalid(f"{login!r} is not a valid login (letters, digits, . _ -)")
        with DB(self.engine, expire_on_commit=False) as db:
            user = db.exec(select(User).where(User.login == login)).first()
            if user is None:
                user = User(login=login, name=name, email=email)
            else:
                user.name, user.email = name, email
            db.add(user)
            db.commit()
            db.refresh(user)
            return user

    def local_user(self) -> User:
        name, email = git_identity()
        login = re.sub(r"[^A-Za-z0-9._-]+", "-", email.split("@")[0]).strip("-") or "local"
        return self.upsert(login, name, email)

    def get(self, user_id: int) -> User | None:
        with DB(self.engine) as db:
            return db.get(User, user_id)

    def by_login(self, login: str) -> User | None:
        with DB(self.engine) as db:
            return db.exec(select(User).where(User.login == login)).first()

    def create_token(self, user: User, name: str) -> str:
        """A new API token for `user`; only its hash is stored, so this is the one chance to see it."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        assert user.id is not None
        with DB(self.engine) as db:
            db.add(
                ApiToken(
                    user_id=user.id, name=name, prefix=token[:10], token_hash=hash_token(token)
                )
            )
            db.commit()
        return token

    def cached(self, token: str) -> User | None:
        """The token's user if it was seen valid in the last `token_cache_seconds` (no I/O:
        for callers on an event loop); None when only `authenticate` can tell."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        return self._seen(hash_token(token), time.monotonic())

    def _seen(self, digest: str, now: float) -> User | None:
        with self._tokens_lock:
            cached = self._tokens.get(digest)
            return cached[1] if cached is not None and cached[0] > now else None

    def authenticate(self, token: str) -> User:
        """The token's user; a token seen valid in the last `token_cache_seconds` is trusted."""
        if not token.startswith(TOKEN_PREFIX):
            raise Unauthorized("invalid API token")
        digest = hash_token(token)
        now = time.monotonic()
        user = self._seen(digest, now)
        if user is not None:
            return user
        user = self._check_token(digest)
        if self.token_cache_seconds > 0:
            with self._tokens_lock:
                self._tokens[digest] = (now + self.token_cache_seconds, user)
                self._tokens.move_to_end(digest)
                while len(self._tokens) > _TOKEN_CACHE_SIZE:
                    self._tokens.popitem(last=False)
        return user

    def _check_token(self, digest: str) -> User:
        with DB(self.engine, expire_on_commit=False) as db:
            row = db.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()
            if row is None or row.revoked_at is not None:
                raise Unauthorized("invalid or revoked API token")
            user = db.get(User, row.user_id)
            if user is None:
                raise Unauthorized("the token's user no longer exists")
            if row.last_used_at is None or time.time() - row.last_used_at > 60:
                row.last_used_at = time.time()
                db.add(row)
                db.commit()
            return user
