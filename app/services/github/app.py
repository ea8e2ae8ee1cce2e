"""GitHub on the control plane: the App's services, built for the composition root, and the
reconciler that catches what webhooks missed.

The PR opener is in `opener.py`, webhooks in `events.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import Repo, Session
from app.services.github.accounts import GitHubAccounts, SignInRequired
from app.services.github.ci import GitHubCI
from app.services.github.code_share import CodeShare
from app.services.github.events import GitHubWebhooks, RebuildHook
from app.services.github.opener import GitHubPullRequests
from app.services.github.pr_stats import PrStatsRecorder
from app.services.github.triggers import GitHubTriggers, TriggerSwitches, build_triggers
from app.services.pull_requests import PullRequests
from app.services.sessions import Sessions
from app.settings import reveal
from integrations.forge.base import Forge
from integrations.github import (
    GitHubApp,
    GitHubConfig,
    GitHubError,
    NotInstalled,
)
from integrations.github.pulls import get_pull_request
from workers.events import PrStateChanged

if TYPE_CHECKING:
    from app.services.hub import EventHub
    from app.settings import Settings

log = logging.getLogger("nightshift.github")
MAX_PR_ATTEMPTS = 3


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
