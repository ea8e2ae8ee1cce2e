"""GitHub on the control plane: people's linked accounts and tokens, and the PR opener.

Sign-in links (or creates) a user from their GitHub identity, so commits carry their GitHub
name and a usable email, and stores their tokens encrypted. The opener opens each session's
pull request with the token of the person whose prompt produced the push; the App's token is
only used to clone and push (and, with `NIGHTSHIFT_PR_FALLBACK=app`, to open the PR on behalf
of someone who has not linked GitHub).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import Engine, update
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import GitHubAccount, Participant, Repo, Session, User
from app.services.crypto import TokenCipher
from app.services.sessions import PullRequestDeferred, Sessions
from images.spec import RepoSpec
from integrations.github import (
    GitHubApp,
    GitHubAuthError,
    GitHubConfig,
    GitHubError,
    GitHubForbidden,
    GitHubForge,
    GitHubIdentity,
    NotInstalled,
    OAuthClient,
    UserTokens,
)
from integrations.github.client import make_client
from integrations.github.pulls import create_pull_request
from workers.events import BranchPushed

if TYPE_CHECKING:
    from app.services.github_events import GitHubWebhooks
    from app.settings import Settings

RebuildHook = Callable[[RepoSpec, str], None]
"""Called with (repo spec, new base sha) after a push to the repo's base branch."""

log = logging.getLogger("nightshift.github")
REFRESH_MARGIN_S = 120.0
PEER_REFRESH_WAIT_S = 5.0
MAX_PR_ATTEMPTS = 3
_LOGIN_RE = re.compile(r"[^A-Za-z0-9._-]+")


class SignInRequired(Exception):
    """The person has no usable GitHub token: they must sign in with GitHub (again)."""


# ---------------------------------------------------------------- accounts and tokens


class GitHubAccounts:
    """Linked GitHub identities; tokens encrypted at rest, refreshed under a per-user lock."""

    def __init__(
        self,
        engine: Engine,
        oauth: OAuthClient,
        cipher: TokenCipher,
        *,
        on_secret: Callable[[str], None] = lambda _s: None,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self.engine = engine
        self.oauth = oauth
        self.cipher = cipher
        self.on_secret = on_secret
        self.refresh_margin_s = refresh_margin_s
        self.peer_wait_s = PEER_REFRESH_WAIT_S
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}

    # ------------------------------------------------------------ sign-in

    def sign_in(self, code: str, redirect_uri: str) -> User:
        """Finish the OAuth web flow: the person's tokens, identity, and user row."""
        tokens = self.oauth.exchange_code(code, redirect_uri)
        identity = self.oauth.identity(tokens.access_token)
        return self.link(identity, tokens)

    def link(self, identity: GitHubIdentity, tokens: UserTokens) -> User:
        """The user for `identity` (found by GitHub id, else an unlinked user with the same login
        or a verified email, else created), with its name, email and tokens brought up to date."""
        now = time.time()
        with DB(self.engine, expire_on_commit=False) as db:
            account = db.exec(
                select(GitHubAccount).where(GitHubAccount.github_id == identity.id)
            ).first()
            user = db.get(User, account.user_id) if account is not None else None
            if user is None:
                user = self._unlinked_match(db, identity)
            if user is None:
                user = User(login=self._free_login(db, identity), name="", email="")
            elif user.login != identity.login and account is not None:
                # A renamed GitHub account: follow the new login when nobody else holds it.
                taken = db.exec(select(User).where(User.login == identity.login)).first()
                if taken is None:
                    user.login = identity.login
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

    def _unlinked_match(self, db: DB, identity: GitHubIdentity) -> User | None:
        linked = select(GitHubAccount.user_id)
        by_login = db.exec(
            select(User).where(User.login == identity.login, col(User.id).not_in(linked))
        ).first()
        if by_login is not None:
            return by_login
        emails = [e.lower() for e in identity.verified_emails]
        if not emails:
            return None
        return db.exec(
            select(User).where(col(User.email).in_(emails), col(User.id).not_in(linked))
        ).first()

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
                tokens = self._exchange(user_id, row)
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
            result = db.exec(  # type: ignore[call-overload]
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

    def _exchange(self, user_id: int, row: GitHubAccount) -> UserTokens:
        if row.refresh_token is None or (
            row.refresh_expires_at is not None and time.time() >= row.refresh_expires_at
        ):
            raise SignInRequired("your GitHub sign-in has expired; sign in with GitHub again")
        try:
            return self.oauth.refresh(self._reveal(row.refresh_token))
        except GitHubAuthError as exc:
            # Another process may be using this refresh token right now: wait for the pair it
            # stores rather than ask the person to sign in again.
            deadline = time.monotonic() + self.peer_wait_s
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


# ---------------------------------------------------------------- the PR opener


def _body(event: BranchPushed, session: Session, base_url: str, requested_by: str | None) -> str:
    summary = event.body.strip() or "(no summary)"
    lines = [summary, "", "---"]
    if requested_by:
        lines.append(f"Requested by @{requested_by}.")
    lines.append(
        f"Opened by Nightshift for session [{session.id}]({base_url}/sessions/{session.id})."
    )
    return "\n".join(lines)


class GitHubPullRequests:
    """Implements `PullRequestOpener` for GitHub: the PR is opened as the person who asked."""

    def __init__(
        self,
        config: GitHubConfig,
        app: GitHubApp,
        accounts: GitHubAccounts | None,
        *,
        base_url: str,
        fallback: str = "none",
    ) -> None:
        self.config = config
        self.app = app
        self.accounts = accounts
        self.base_url = base_url
        self.fallback = fallback

    def sign_in_link(self, session_id: str) -> str:
        return f"{self.base_url}/auth/github/login?next={quote(f'/sessions/{session_id}')}"

    def open(
        self, session: Session, repo: Repo, author: User, event: BranchPushed
    ) -> tuple[str, int, str]:
        assert author.id is not None
        title = event.title or session.title
        problem = "you have not signed in with GitHub"
        token = None
        if self.accounts is not None:
            try:
                token = self.accounts.user_token(author.id)
            except SignInRequired as exc:
                problem = str(exc)
        if token is not None:
            gh = make_client(self.config, token)
            try:
                pr, _ = create_pull_request(
                    gh,
                    repo.url,
                    head=event.branch,
                    base=event.base,
                    title=title,
                    body=_body(event, session, self.base_url, None),
                )
                return pr.url, pr.number, pr.state
            except GitHubAuthError as exc:
                problem = f"GitHub refused your token ({exc})"
            except GitHubForbidden:
                if self.fallback != "app":
                    raise  # a permission problem: the error event says which
                problem = "your account may not open it"
        if self.fallback == "app":
            gh = self.app.as_installation(repo.url)
            pr, _ = create_pull_request(
                gh,
                repo.url,
                head=event.branch,
                base=event.base,
                title=title,
                body=_body(event, session, self.base_url, author.login),
            )
            return pr.url, pr.number, pr.state
        compare = f"{self.config.web_url}/{repo.url}/compare/{event.base}...{event.branch}"
        if self.accounts is None:
            raise PullRequestDeferred(
                f"Branch {event.branch} is pushed. GitHub sign-in is not configured on this "
                f"server, so the pull request cannot be opened in your name: open it yourself.",
                compare,
            )
        raise PullRequestDeferred(
            f"Branch {event.branch} is pushed, but the pull request is opened with your own "
            f"GitHub account and {problem}. Sign in with GitHub and it opens right away.",
            self.sign_in_link(session.id),
        )

    def retry_failed(self, sessions: Sessions, days: float = 7.0) -> list[str]:
        """Open the PRs whose opening failed (GitHub down, rate limited), a few times at most:
        each failed attempt leaves a `pr_failed` error, and after MAX_PR_ATTEMPTS we stop."""
        with DB(sessions.engine) as db:
            rows = db.exec(
                select(Session.id)
                .join(Repo, col(Repo.id) == Session.repo_id)
                .where(
                    Repo.forge == "github",
                    col(Session.head_sha).is_not(None),
                    col(Session.pr_number).is_(None),
                    col(Session.updated_at) >= time.time() - days * 86400,
                )
            ).all()
        opened = []
        for session_id in rows:
            store = sessions.files.get(session_id)
            recent = store.events(max(0, store.last_event_id() - 5000), 5000)
            failures = sum(
                1 for e in recent if e.type == "error" and getattr(e, "code", "") == "pr_failed"
            )
            if 0 < failures < MAX_PR_ATTEMPTS and sessions.retry_pull_request(session_id):
                opened.append(session_id)
        return opened

    def open_pending(self, sessions: Sessions, user: User, days: float = 30.0) -> list[str]:
        """After `user` signs in: open the PRs their pushed branches are still waiting for."""
        assert user.id is not None
        with DB(sessions.engine) as db:
            rows = db.exec(
                select(Session)
                .join(Repo, col(Repo.id) == Session.repo_id)
                .join(Participant, col(Participant.session_id) == Session.id)
                .where(
                    Repo.forge == "github",
                    Participant.user_id == user.id,
                    col(Session.head_sha).is_not(None),
                    col(Session.pr_number).is_(None),
                    col(Session.updated_at) >= time.time() - days * 86400,
                )
            ).all()
        opened = []
        for row in rows:
            try:
                if sessions.retry_pull_request(row.id, only_author=user.id):
                    opened.append(row.id)
            except Exception:
                log.exception("opening the pending PR of %s failed", row.id)
        return opened


# ---------------------------------------------------------------- wiring


@dataclass
class GitHubServices:
    """Everything the App identity powers: the forge, the PR opener, webhooks."""

    config: GitHubConfig
    app: GitHubApp
    forge: GitHubForge
    opener: GitHubPullRequests
    webhooks: GitHubWebhooks

    def default_branch(self, repo: str) -> str:
        """For `repos add`: the repo's default branch, or a clear error when the App cannot
        reach it."""
        try:
            return self.app.repo_info(repo).default_branch
        except NotInstalled:
            raise
        except GitHubError as exc:
            raise GitHubError(f"cannot read {repo} on GitHub: {exc}") from exc


def github_config(settings: Settings) -> GitHubConfig:
    return GitHubConfig(api_url=settings.github_api_url.rstrip("/"))


def build_accounts(
    settings: Settings, engine: Engine, on_secret: Callable[[str], None]
) -> GitHubAccounts | None:
    if not settings.github_oauth_enabled:
        return None
    assert settings.github_client_id and settings.github_client_secret and settings.secret_keys
    oauth = OAuthClient(
        github_config(settings),
        settings.github_client_id,
        settings.github_client_secret,
        on_token=on_secret,
    )
    return GitHubAccounts(engine, oauth, TokenCipher(settings.secret_keys), on_secret=on_secret)


def build_github(
    settings: Settings,
    *,
    engine: Engine,
    sessions: Sessions,
    accounts: GitHubAccounts | None,
    on_secret: Callable[[str], None],
    submit: Callable[[Callable[[], object]], object],
    rebuild_hooks: list[RebuildHook],
    data_dir: Path,
) -> GitHubServices | None:
    if not settings.github_enabled:
        return None
    from app.services.github_events import GitHubWebhooks

    config = github_config(settings)
    assert settings.github_app_id is not None
    app = GitHubApp(
        config, settings.github_app_id, settings.github_private_key(), on_token=on_secret
    )
    opener = GitHubPullRequests(
        config, app, accounts, base_url=settings.base_url, fallback=settings.pr_fallback
    )
    webhooks = GitHubWebhooks(
        engine,
        settings.github_webhook_secret or "",
        sessions,
        app,
        submit=submit,
        rebuild_hooks=rebuild_hooks,
    )
    return GitHubServices(
        config=config,
        app=app,
        forge=GitHubForge(app, data_dir / "github" / "mirrors"),
        opener=opener,
        webhooks=webhooks,
    )


__all__ = [
    "GitHubAccounts",
    "GitHubPullRequests",
    "GitHubServices",
    "SignInRequired",
    "build_accounts",
    "build_github",
]
