"""GitHub on the control plane: the PR opener and the wiring of the App's services.

The opener opens each session's pull request with the token of the person whose prompt
produced the push (see `accounts.py` for how that token is kept); the App's token is
only used to clone and push (and, with `NIGHTSHIFT_PR_FALLBACK=app`, to open the PR on behalf
of someone who has not linked GitHub). Webhooks are in `events.py`; the reconciler that
catches what they missed is at the end of this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import Participant, Repo, Session, User
from app.services.github.accounts import GitHubAccounts, SignInRequired
from app.services.github.ci import GitHubCI
from app.services.github.code_share import CodeShare
from app.services.github.events import GitHubWebhooks, RebuildHook
from app.services.github.pr_stats import PrStatsRecorder
from app.services.github.triggers import GitHubTriggers, TriggerSwitches, build_triggers
from app.services.pull_requests import PullRequestDeferred, PullRequests
from app.services.sessions import Sessions
from app.settings import reveal
from integrations.forge.base import Forge
from integrations.github import (
    GitHubApp,
    GitHubAuthError,
    GitHubConfig,
    GitHubError,
    GitHubForbidden,
    NotInstalled,
)
from integrations.github.client import make_client
from integrations.github.pulls import comment, create_pull_request, get_pull_request
from workers.events import BranchPushed, PrStateChanged

if TYPE_CHECKING:
    from app.services.hub import EventHub
    from app.settings import Settings

log = logging.getLogger("nightshift.github")
MAX_PR_ATTEMPTS = 3


# ---------------------------------------------------------------- the PR opener


def _body(event: BranchPushed, session: Session, base_url: str, requested_by: str | None) -> str:
    summary = event.body.strip() or "(no summary)"
    summary = summary.replace("](/api/sessions/", f"]({base_url}/api/sessions/")
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
        """Where a person whose PR waits connects (or renews) their GitHub link."""
        return f"{self.base_url}/auth/github/link?next={quote(f'/sessions/{session_id}')}"

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
                pr, created = create_pull_request(
                    gh,
                    repo.url,
                    head=event.branch,
                    base=event.base,
                    title=title,
                    body=_body(event, session, self.base_url, None),
                    draft=event.draft,
                )
                if not created:
                    self._follow_up(gh, repo, pr.number, event, session, None)
                return pr.url, pr.number, pr.state
            except GitHubAuthError as exc:
                problem = f"GitHub refused your token ({exc})"
            except GitHubForbidden:
                if self.fallback != "app":
                    raise  # a permission problem: the error event says which
                problem = "your account may not open it"
        if self.fallback == "app":
            gh = self.app.as_installation(repo.url)
            pr, created = create_pull_request(
                gh,
                repo.url,
                head=event.branch,
                base=event.base,
                title=title,
                body=_body(event, session, self.base_url, author.login),
                draft=event.draft,
            )
            if not created:
                self._follow_up(gh, repo, pr.number, event, session, author.login)
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
            f"GitHub account and {problem}. Connect your GitHub account and it opens right "
            "away.",
            self.sign_in_link(session.id),
        )

    def _follow_up(
        self,
        gh: Any,
        repo: Repo,
        number: int,
        event: BranchPushed,
        session: Session,
        requested_by: str | None,
    ) -> None:
        """New commits on a PR that was already open: say what they are on its conversation."""
        heading = (
            f"Pushed {event.sha[:10]}: {event.title}" if event.title else f"Pushed {event.sha[:10]}"
        )
        try:
            comment(
                gh,
                repo.url,
                number,
                f"{heading}\n\n{_body(event, session, self.base_url, requested_by)}",
            )
        except GitHubError as exc:
            log.warning("could not comment on %s#%s: %s", repo.url, number, exc)

    def retry_failed(self, pulls: PullRequests, days: float = 7.0) -> list[str]:
        """Open the PRs whose opening failed (GitHub down, rate limited), a few times at most:
        each failed attempt leaves a `pr_failed` error, and after MAX_PR_ATTEMPTS we stop."""
        with DB(pulls.sessions.engine) as db:
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
            store = pulls.files.get(session_id)
            recent = store.events(max(0, store.last_event_id() - 5000), 5000)
            failures = sum(
                1 for e in recent if e.type == "error" and getattr(e, "code", "") == "pr_failed"
            )
            if 0 < failures < MAX_PR_ATTEMPTS and pulls.retry(session_id):
                opened.append(session_id)
        return opened

    def open_pending(self, pulls: PullRequests, user: User, days: float = 30.0) -> list[str]:
        """After `user` signs in: open the PRs their pushed branches are still waiting for."""
        assert user.id is not None
        with DB(pulls.sessions.engine) as db:
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
                if pulls.retry(row.id, only_author=user.id):
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
    forge: Forge
    opener: GitHubPullRequests
    webhooks: GitHubWebhooks
    triggers: GitHubTriggers
    """Mentions and reviews that start sessions or queue follow-ups."""
    pr_stats: PrStatsRecorder
    """Records the agent's commits and pushes and its PRs' reviews for `GET /api/stats`."""

    def default_branch(self, repo: str) -> str:
        return default_branch(self.app, repo)


def default_branch(app: GitHubApp, repo: str) -> str:
    """For `repos add`: the repo's default branch, or a clear error when the App cannot
    reach it."""
    try:
        return app.repo_info(repo).default_branch
    except NotInstalled:
        raise
    except GitHubError as exc:
        raise GitHubError(f"cannot read {repo} on GitHub: {exc}") from exc


def github_config(settings: Settings) -> GitHubConfig:
    return GitHubConfig(api_url=settings.github_api_url.rstrip("/"))


def github_app(settings: Settings, on_secret: Callable[[str], None]) -> GitHubApp | None:
    """The App's identity (installation tokens, learnt by `on_secret` to be redacted), or None
    when it is not configured. The API and every worker start from this one."""
    if not settings.github_enabled:
        return None
    assert settings.github_app_id is not None
    return GitHubApp(
        github_config(settings),
        settings.github_app_id,
        settings.github_private_key(),
        on_token=on_secret,
    )


def github_opener(
    settings: Settings, app: GitHubApp, accounts: GitHubAccounts | None
) -> GitHubPullRequests:
    return GitHubPullRequests(
        app.config, app, accounts, base_url=settings.base_url, fallback=settings.pr_fallback
    )


def build_github(
    settings: Settings,
    *,
    app: GitHubApp,
    forge: Forge,
    opener: GitHubPullRequests,
    engine: Engine,
    sessions: Sessions,
    accounts: GitHubAccounts | None,
    submit: Callable[[Callable[[], object]], object],
    rebuild_hooks: list[RebuildHook],
) -> GitHubServices:
    """The App's services on the API: webhooks, and the triggers and CI they hand work to.
    The event table sends events to `triggers.asks` and `pr_stats`."""
    config = app.config
    triggers = build_triggers(
        engine,
        sessions,
        app,
        linked_user_id=accounts.linked_user_id if accounts is not None else None,
        switches=TriggerSwitches(
            issues=settings.github_issue_triggers, pull_requests=settings.github_pr_followups
        ),
        base_url=settings.base_url,
        submit=submit,
    )
    pr_stats = PrStatsRecorder(engine)
    webhooks = GitHubWebhooks(
        engine,
        reveal(settings.github_webhook_secret) or "",
        sessions,
        app,
        submit=submit,
        rebuild_hooks=rebuild_hooks,
        triggers=triggers,
        ci=GitHubCI(engine, sessions, app, attempts=settings.ci_fix_attempts),
        pr_stats=pr_stats,
        code_share=CodeShare(engine, app),
    )
    return GitHubServices(
        config=config,
        app=app,
        forge=forge,
        opener=opener,
        webhooks=webhooks,
        triggers=triggers,
        pr_stats=pr_stats,
    )


# ---------------------------------------------------------------- the reconciler


@dataclass(frozen=True)
class Reconciled:
    deliveries: int
    """Webhook deliveries left queued, processed now."""
    checked: int
    """Open PRs whose state was read from GitHub."""
    updated: int
    """Sessions whose `pr_state` changed."""
    errors: int
    opened: int = 0
    """PRs opened on a retry after GitHub failed the first attempt."""

    def summary(self) -> str:
        return (
            f"{self.checked} open PRs checked, {self.updated} updated, "
            f"{self.deliveries} queued deliveries handled, {self.opened} PRs opened, "
            f"{self.errors} errors"
        )


def reconcile_github(
    github: GitHubServices | None,
    pulls: PullRequests,
    engine: Engine,
    hub: EventHub,
    sessions: Sessions,
) -> Reconciled:
    """Catch up with GitHub: process deliveries left queued, then read every open PR's state
    and apply changes. Safe to run anywhere, any time (Celery beat, the in-process schedule,
    `nightshift github reconcile`)."""
    if github is None:
        return Reconciled(0, 0, 0, 0)
    deliveries = github.webhooks.process_stale()
    opened = len(github.opener.retry_failed(pulls))
    with DB(engine) as db:
        rows = db.exec(
            select(Session, Repo)
            .join(Repo, col(Repo.id) == Session.repo_id)
            .where(
                Repo.forge == "github",
                col(Session.pr_number).is_not(None),
                Session.pr_state == "open",
            )
        ).all()
    checked = updated = errors = 0
    clients: dict[str, Any] = {}
    for session, repo in rows:
        assert session.pr_number is not None
        try:
            gh = clients.get(repo.url) or github.app.as_installation(repo.url)
            clients[repo.url] = gh
            pr = get_pull_request(gh, repo.url, session.pr_number)
        except GitHubError as exc:
            errors += 1
            log.warning("reconciling %s (%s#%s): %s", session.id, repo.url, session.pr_number, exc)
            continue
        checked += 1
        with hub.lock(session.id):
            if sessions.get(session.id).pr_state != pr.state:
                hub.publish(session.id, PrStateChanged(state=pr.state))
                updated += 1
    if updated or deliveries or errors or opened:
        log.info(
            "GitHub reconciled: %d deliveries, %d PRs checked, %d updated, %d opened, %d errors",
            deliveries,
            checked,
            updated,
            opened,
            errors,
        )
    return Reconciled(deliveries, checked, updated, errors, opened)


__all__ = [
    "GitHubAccounts",
    "GitHubPullRequests",
    "GitHubServices",
    "RebuildHook",
    "Reconciled",
    "SignInRequired",
    "build_github",
    "reconcile_github",
]
