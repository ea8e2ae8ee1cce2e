"""People's linked GitHub accounts: sign-in links a user to a GitHub identity; their tokens
are kept encrypted at rest and refreshed under a per-user lock that persists the rotated pair.

An identity links to a user by GitHub user id only, never by login or email (anyone can
register a login or address that matches a local user). A GitHub account not linked yet gets a
new user only when the deployment allows it (an allowed organization's active member, or an
allowed login); an existing user links GitHub by asking for it while signed in. Either way the
user's name and email become their GitHub name and commit email, so commits made for them carry
their identity.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine, update
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import AppError
from app.models import GitHubAccount, User
from app.services.crypto import TokenCipher
from integrations.github import (
    GitHubAuthError,
    GitHubConfig,
    GitHubIdentity,
    OAuthClient,
    UserTokens,
)

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger("nightshift.github")
REFRESH_MARGIN_S = 120.0
PEER_REFRESH_WAIT_S = 5.0
_LOGIN_RE = re.compile(r"[^A-Za-z0-9._-]+")


class SignInRequired(AppError):
    """The person has no usable GitHub token: they must sign in with GitHub (again)."""


class SignInRefused(AppError):
    """GitHub vouched for who the person is, and this server does not let them in."""


class LinkRefused(AppError):
    """A GitHub identity cannot be linked to the user who asked (it belongs to another)."""


@dataclass(frozen=True)
class SignInPolicy:
    """Whose GitHub account may get a new user by signing in (lower-case names)."""

    orgs: tuple[str, ...] = ()
    """Organizations whose active members may sign in."""
    users: tuple[str, ...] = ()
    """GitHub logins (or numeric user ids) that may sign in."""


class GitHubAccounts:
    """Linked GitHub identities; tokens encrypted at rest, refreshed under a per-user lock."""

    def __init__(
        self,
        engine: Engine,
        oauth: OAuthClient,
        cipher: TokenCipher,
        policy: SignInPolicy,
        *,
        on_secret: Callable[[str], None] = lambda _s: None,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self.engine = engine
        self.oauth = oauth
        self.cipher = cipher
        self.policy = policy
        self.on_secret = on_secret
        self.refresh_margin_s = refresh_margin_s
        self.peer_wait_s = PEER_REFRESH_WAIT_S
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}

    # ------------------------------------------------------------ sign-in

    def sign_in(self, code: str, redirect_uri: str, link_to: int | None = None) -> User:
        """Finish the OAuth web flow: the person's tokens, identity, and user row. With
        `link_to`, the signed-in user who asked to link GitHub gets this identity."""
        tokens = self.oauth.exchange_code(code, redirect_uri)
        identity = self.oauth.identity(tokens.access_token)
        if link_to is not None:
            return self.link(identity, tokens, link_to)
        if self.linked_user_id(identity.id) is None:
            self.check_allowed(identity, tokens.access_token)
        return self.link(identity, tokens)

    def linked_user_id(self, github_id: int) -> int | None:
        with DB(self.engine) as db:
            account = db.exec(
                select(GitHubAccount).where(GitHubAccount.github_id == github_id)
            ).first()
            return account.user_id if account is not None else None

    def check_allowed(self, identity: GitHubIdentity, access_token: str) -> None:
        """May this GitHub account get a new user here? SignInRefused says why not."""
        policy = self.policy
        if not policy.orgs and not policy.users:
            raise SignInRefused(
                f"This server lets in only GitHub accounts already linked to a Nightshift user, "
                f"and @{identity.login} is not. If you have a Nightshift account, sign in with "
                "it and link GitHub from there; otherwise ask the operator to allow you "
                "(NIGHTSHIFT_GITHUB_ALLOWED_ORGS or NIGHTSHIFT_GITHUB_ALLOWED_USERS)."
            )
        if identity.login.lower() in policy.users or str(identity.id) in policy.users:
            return
        for org in policy.orgs:
            if self.oauth.is_member(access_token, org):
                return
        raise SignInRefused(
            f"GitHub account @{identity.login} may not sign in here: it is neither an active "
            "member of an allowed GitHub organization nor on this server's list of allowed "
            "users. Ask the operator to allow you."
        )

    def link(self, identity: GitHubIdentity, tokens: UserTokens, to: int | None = None) -> User:
        """Store `identity` and its tokens on its user: the one its GitHub id is linked to (a
        new user when none is; the caller checked the person may have one), or `to`, the
        signed-in user who asked to link. Never matched by login or email: those are names
        anyone can take. The user's name and email become their GitHub ones, so commits made
        for them carry their identity."""
        now = time.time()
        with DB(self.engine, expire_on_commit=False) as db:
            account = db.exec(
                select(GitHubAccount).where(GitHubAccount.github_id == identity.id)
            ).first()
            user: User | None
            if to is not None:
                user, account = self._link_target(db, identity, account, to)
            elif account is not None:
                user = db.get(User, account.user_id)
                assert user is not None  # users are never deleted while linked
                if user.login != identity.login:
                    # A renamed GitHub account: follow the new login when nobody else holds it.
                    taken = db.exec(select(User).where(User.login == identity.login)).first()
                    if taken is None:
                        user.login = identity.login
            else:
                user = User(login=self._free_login(db, identity), name="", email="")
            user.name, user.email = identity.name[:200], identity.email[:320]
            db.add(user)
            db.flush()
            assert user.id is not None
            if account is None:
                account = GitHubAccount(
                    user_id=user.id, github_id=identity.id, login=identity.login, access_token=""
                )
            account.login = identity.login
            self._apply(account, tokens, now)
            db.add(account)
            db.commit()
            db.refresh(user)
            return user

    @staticmethod
    def _link_target(
        db: DB, identity: GitHubIdentity, account: GitHubAccount | None, user_id: int
    ) -> tuple[User, GitHubAccount | None]:
        if account is not None and account.user_id != user_id:
            raise LinkRefused(
                f"GitHub account @{identity.login} is already linked to another Nightshift "
                "user; it can belong to one only. Sign in with GitHub to use that user."
            )
        user = db.get(User, user_id)
        if user is None:
            raise LinkRefused("the Nightshift user who asked to link no longer exists")
        own = db.get(GitHubAccount, user_id)
        if own is not None and own.github_id != identity.id:
            raise LinkRefused(
                f"your Nightshift account is already linked to GitHub account @{own.login}; "
                f"it cannot be linked to @{identity.login} as well"
            )
        return user, own

    def _free_login(self, db: DB, identity: GitHubIdentity) -> str:
        base = _LOGIN_RE.sub("-", identity.login).strip("-")[:80] or f"github-{identity.id}"
        for candidate in (base, f"{base}-{identity.id}"):
            if db.exec(select(User).where(User.login == candidate)).first() is None:
                return candidate
        return f"github-{identity.id}"

    def _apply(self, account: GitHubAccount, tokens: UserTokens, now: float) -> None:
        account.access_token = self.cipher.encrypt(tokens.access_token)
        account.access_expires_at = tokens.expires_at
        account.refresh_token = (
            self.cipher.encrypt(tokens.refresh_token) if tokens.refresh_token else None
        )
        account.refresh_expires_at = tokens.refresh_expires_at
        account.version += 1
        account.updated_at = now

    # ------------------------------------------------------------ reading

    def account(self, user_id: int) -> GitHubAccount | None:
        with DB(self.engine) as db:
            return db.get(GitHubAccount, user_id)

    def _expired(self, account: GitHubAccount) -> bool:
        return (
            account.access_expires_at is not None
            and time.time() >= account.access_expires_at - self.refresh_margin_s
        )

    def _reveal(self, value: str) -> str:
        secret = self.cipher.decrypt(value)
        self.on_secret(secret)
        return secret

    def user_token(self, user_id: int) -> str | None:
        """The person's current access token; refreshed first when it is about to expire.
        None when they never linked GitHub; SignInRequired when the link no longer works."""
        account = self.account(user_id)
        if account is None:
            return None
        if not self._expired(account):
            return self._reveal(account.access_token)
        with self._guard:
            lock = self._locks.setdefault(user_id, threading.Lock())
        with lock:
            return self._refresh(user_id)

    def _refresh(self, user_id: int) -> str:
        if self.engine.dialect.name == "postgresql":
            # Other API hosts and workers share the row: hold its lock across the refresh.
            with DB(self.engine, expire_on_commit=False) as db:
                row = db.exec(
                    select(GitHubAccount).where(GitHubAccount.user_id == user_id).with_for_update()
                ).first()
                if row is None:
                    raise SignInRequired("your GitHub account was unlinked; sign in with GitHub")
                if not self._expired(row):
                    return self._reveal(row.access_token)
                tokens = self._exchange(user_id, row, wait_for_peer=False)
                self._apply(row, tokens, time.time())
                db.add(row)
                db.commit()
                return tokens.access_token
        # SQLite: one writer per process anyway; a write lock must not be held across HTTP.
        # Store the new pair only if nobody stored one since we read (compare-and-swap).
        row = self.account(user_id)
        if row is None:
            raise SignInRequired("your GitHub account was unlinked; sign in with GitHub")
        if not self._expired(row):
            return self._reveal(row.access_token)
        tokens = self._exchange(user_id, row)
        fresh = GitHubAccount(
            user_id=user_id, github_id=row.github_id, login=row.login, access_token=""
        )
        self._apply(fresh, tokens, time.time())
        with DB(self.engine) as db:
            result = db.exec(
                update(GitHubAccount)
                .where(
                    col(GitHubAccount.user_id) == user_id,
                    col(GitHubAccount.version) == row.version,
                )
                .values(
                    access_token=fresh.access_token,
                    access_expires_at=fresh.access_expires_at,
                    refresh_token=fresh.refresh_token,
                    refresh_expires_at=fresh.refresh_expires_at,
                    version=GitHubAccount.version + 1,
                    updated_at=fresh.updated_at,
                )
            )
            db.commit()
        if result.rowcount != 1:
            log.warning("GitHub tokens of user %s changed during a refresh", user_id)
        return tokens.access_token

    def _exchange(self, user_id: int, row: GitHubAccount, wait_for_peer: bool = True) -> UserTokens:
        if row.refresh_token is None or (
            row.refresh_expires_at is not None and time.time() >= row.refresh_expires_at
        ):
            raise SignInRequired("your GitHub sign-in has expired; sign in with GitHub again")
        try:
            return self.oauth.refresh(self._reveal(row.refresh_token))
        except GitHubAuthError as exc:
            # Another process may be using this refresh token right now: wait for the pair it
            # stores rather than ask the person to sign in again.
            deadline = time.monotonic() + (self.peer_wait_s if wait_for_peer else 0.0)
            latest = self.account(user_id)
            while latest is not None and latest.version == row.version:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
                latest = self.account(user_id)
            if latest is not None and latest.version != row.version and not self._expired(latest):
                return UserTokens(
                    access_token=self._reveal(latest.access_token),
                    expires_at=latest.access_expires_at,
                    refresh_token=(
                        self._reveal(latest.refresh_token) if latest.refresh_token else None
                    ),
                    refresh_expires_at=latest.refresh_expires_at,
                )
            raise SignInRequired(
                f"GitHub refused to renew your sign-in ({exc}); sign in with GitHub again"
            ) from exc

    def rotate_keys(self) -> int:
        """Re-encrypt every stored token under the first configured key; returns how many."""
        count = 0
        with DB(self.engine) as db:
            for row in db.exec(select(GitHubAccount)).all():
                row.access_token = self.cipher.rotate(row.access_token)
                if row.refresh_token:
                    row.refresh_token = self.cipher.rotate(row.refresh_token)
                db.add(row)
                count += 1
            db.commit()
        return count


def build_accounts(
    settings: Settings, engine: Engine, on_secret: Callable[[str], None]
) -> GitHubAccounts | None:
    if not settings.github_oauth_enabled:
        return None
    assert settings.github_client_id and settings.github_client_secret and settings.secret_keys
    oauth = OAuthClient(
        GitHubConfig(api_url=settings.github_api_url.rstrip("/")),
        settings.github_client_id,
        settings.github_client_secret.get_secret_value(),
        on_token=on_secret,
    )
    return GitHubAccounts(
        engine,
        oauth,
        TokenCipher(settings.secret_keys.get_secret_value()),
        SignInPolicy(settings.allowed_orgs, settings.allowed_users),
        on_secret=on_secret,
    )
