"""GitHub webhooks (the reconciler that catches what they missed is in `github.py`).

A delivery is verified (HMAC-SHA256 of the raw body) before anything parses it, recorded by
its `X-GitHub-Delivery` id (insert-or-ignore: a redelivery is a no-op), answered at once, and
processed in the background from the stored copy, so a crash between answering and processing
loses nothing: the reconciler picks up deliveries left queued. Processing:

- `pull_request` → the session's PR number, URL and state (`PrStateChanged` through the hub,
  so it is persisted, streamed, and applied to the index);
- `push` to a repo's base branch → the image rebuild hooks, and the lines each pushed commit
  added (`code_share.py`);
- `installation`, `installation_repositories` → the installations table, and the App's
  cached tokens of removed installations are dropped;
- `issues`, `issue_comment`, `pull_request_review_comment`, `pull_request_review` → sessions
  and follow-ups asked for by mentions and reviews (`triggers.py`);
- `check_run`, `check_suite`, `workflow_run` → failing checks sent back as work
  (`ci.py`).

A delivery that asks for nothing (a field missing, an unknown repository or PR, a bot, a person
without write access, an empty mention) is recorded as `ignored` with its reason in `error`.

GitHub does not redeliver failed deliveries by itself, so `reconcile_github` (every 10
minutes, in `github.py`) also reads the state of every open PR.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine, delete, insert, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import AppError
from app.models import GitHubDelivery, GitHubInstallation, Session
from app.services.github.asks import repos_named
from app.services.github.ci import GitHubCI
from app.services.github.code_share import CodeShare
from app.services.github.gate import Ignored
from app.services.github.pr_stats import PrStatsRecorder
from app.services.github.triggers import GitHubTriggers
from app.services.repo_catalog import spec_of
from app.services.sessions import Sessions
from images.spec import RepoSpec
from images.sql import table_of
from integrations.github import GitHubApp, verify_signature
from integrations.github.pulls import state_of
from workers.events import PrOpened, PrStateChanged

_S = TypeVar("_S")

RebuildHook = Callable[[RepoSpec, str], None]
"""Called with (repo spec, new base sha) after a push to the repo's base branch."""

log = logging.getLogger("nightshift.github.webhooks")
ZERO_SHA = "0" * 40
STALE_QUEUED_S = 60.0
"""A delivery still queued this long after it arrived was lost by a crashed process."""
STALE_PROCESSING_S = 600.0
MAX_ATTEMPTS = 5
KEEP_DELIVERIES_S = 30 * 86400.0


class BadDelivery(AppError, ValueError):
    """A signed delivery we cannot use (missing headers, not a JSON object)."""


@dataclass(frozen=True)
class Received:
    outcome: Literal["queued", "duplicate"]
    delivery: str
    event: str


class GitHubWebhooks:
    def __init__(
        self,
        engine: Engine,
        secret: str,
        sessions: Sessions,
        app: GitHubApp | None,
        *,
        submit: Callable[[Callable[[], object]], object],
        rebuild_hooks: list[RebuildHook],
        triggers: GitHubTriggers | None = None,
        ci: GitHubCI | None = None,
        pr_stats: PrStatsRecorder | None = None,
        code_share: CodeShare | None = None,
    ) -> None:
        self.pr_stats = pr_stats
        self.code_share = code_share
        """Records reviews and merges of sessions' PRs for `GET /api/stats`."""
        self.engine = engine
        self.triggers = triggers
        """Mentions and reviews that ask for work (None: those events are ignored)."""
        self.ci = ci
        """Failing checks sent back as work (None: those events are ignored)."""
        self.secret = secret
        self.sessions = sessions
        self.app = app
        self.submit = submit
        """Runs processing in the background (the in-process executor, or a task queue)."""
        self.rebuild_hooks = rebuild_hooks

    # ------------------------------------------------------------ intake

    def receive(self, body: bytes, headers: Mapping[str, str]) -> Received:
        """Verify, record and queue one delivery. InvalidSignature → 401; BadDelivery → 400."""
        verify_signature(self.secret, body, headers.get("x-hub-signature-256"))
        delivery = (headers.get("x-github-delivery") or "").strip()
        event = (headers.get("x-github-event") or "").strip()
        if not delivery or len(delivery) > 64 or not event or len(event) > 64:
            raise BadDelivery("X-GitHub-Delivery and X-GitHub-Event headers are required")
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise BadDelivery(f"the body is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise BadDelivery("the body is not a JSON object")
        action = payload.get("action")
        row = {
            "id": delivery,
            "event": event,
            "action": str(action)[:64] if action else None,
            "payload": body.decode("utf-8", errors="replace"),
            "status": "queued",
            "attempts": 0,
            "received_at": time.time(),
        }
        if not self._insert_new(row):
            return Received("duplicate", delivery, event)
        self.submit(lambda: self.process(delivery))
        return Received("queued", delivery, event)

    def _insert_new(self, row: dict[str, Any]) -> bool:
        """Insert-or-ignore by delivery id; True when the row is new."""
        table = table_of(GitHubDelivery)
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            statement: Any = sqlite_insert(table).values(**row).on_conflict_do_nothing()
        elif dialect == "postgresql":
            statement = postgresql_insert(table).values(**row).on_conflict_do_nothing()
        else:
            statement = insert(table).values(**row)
        with DB(self.engine) as db:
            try:
                inserted = db.exec(statement.returning(table.c.id)).first()
                db.commit()
            except IntegrityError:
                return False
            return inserted is not None

    # ------------------------------------------------------------ processing

    def _claim(self, delivery: str) -> GitHubDelivery | None:
        with DB(self.engine, expire_on_commit=False) as db:
            result = db.exec(
                update(GitHubDelivery)
                .where(
                    col(GitHubDelivery.id) == delivery,
                    col(GitHubDelivery.status) == "queued",
                )
                .values(status="processing", attempts=GitHubDelivery.attempts + 1)
            )
            db.commit()
            if result.rowcount != 1:
                return None
            return db.get(GitHubDelivery, delivery)

    def _finish(self, delivery: str, status: str, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "error": error, "processed_at": time.time()}
        if status in ("done", "ignored"):
            values["payload"] = ""  # keep the id for de-duplication, drop the body
        with DB(self.engine) as db:
            db.exec(
                update(GitHubDelivery).where(col(GitHubDelivery.id) == delivery).values(**values)
            )
            db.commit()

    def process(self, delivery: str) -> str | None:
        """Handle a queued delivery once; returns its final status (None if not ours to do)."""
        row = self._claim(delivery)
        if row is None:
            return None
        handler = getattr(self, f"_on_{row.event}", None)
        if handler is None:
            self._finish(delivery, "ignored", f"{row.event} events are not used")
            return "ignored"
        try:
            handler(json.loads(row.payload))
        except Ignored as exc:
            log.info("GitHub %s delivery %s ignored: %s", row.event, delivery, exc)
            self._finish(delivery, "ignored", str(exc)[:2000])
            return "ignored"
        except Exception as exc:
            log.exception("GitHub %s delivery %s failed", row.event, delivery)
            retry = row.attempts < MAX_ATTEMPTS
            self._finish(delivery, "queued" if retry else "failed", f"{type(exc).__name__}: {exc}")
            return "queued" if retry else "failed"
        self._finish(delivery, "done")
        return "done"

    def process_stale(self, now: float | None = None) -> int:
        """Process deliveries a crashed or busy process left behind; returns how many. Ids of
        handled deliveries are forgotten after KEEP_DELIVERIES_S (GitHub redelivers for days,
        not months)."""
        now = now or time.time()
        with DB(self.engine) as db:
            db.exec(
                delete(GitHubDelivery).where(
                    col(GitHubDelivery.status).in_(["done", "ignored", "failed"]),
                    col(GitHubDelivery.received_at) < now - KEEP_DELIVERIES_S,
                )
            )
            db.exec(
                update(GitHubDelivery)
                .where(
                    col(GitHubDelivery.status) == "processing",
                    col(GitHubDelivery.received_at) < now - STALE_PROCESSING_S,
                )
                .values(status="queued")
            )
            db.commit()
            stale = db.exec(
                select(GitHubDelivery.id).where(
                    GitHubDelivery.status == "queued",
                    col(GitHubDelivery.received_at) < now - STALE_QUEUED_S,
                )
            ).all()
        return sum(1 for delivery in stale if self.process(delivery) is not None)

    # ------------------------------------------------------------ events

    def _on_ping(self, payload: dict[str, Any]) -> None:
        log.info("GitHub says: %s", payload.get("zen", "hello"))

    def _on_pull_request(self, payload: dict[str, Any]) -> None:
        pr = payload["pull_request"]
        # A removed repo's sessions still learn that their PR was merged or closed: history.
        repos = repos_named(self.engine, payload["repository"]["full_name"])
        if not repos:
            return
        number = int(pr["number"])
        head_info = pr.get("head") or {}
        head = str(head_info.get("ref", ""))
        same_repo = (head_info.get("repo") or {}).get("full_name", "").lower() == str(
            payload["repository"]["full_name"]
        ).lower()
        if not same_repo:
            head = ""  # a fork's branch of the same name is not the session's
        state = state_of(pr)
        with DB(self.engine) as db:
            rows = db.exec(
                select(Session).where(
                    col(Session.repo_id).in_([r.id for r in repos]),
                    (col(Session.pr_number) == number)
                    | ((col(Session.branch) == head) & col(Session.pr_number).is_(None)),
                )
            ).all()
        if self.pr_stats is not None:
            self.pr_stats.on_pull([row.id for row in rows], pr)
        for row in rows:
            with self.sessions.hub.lock(row.id):
                current = self.sessions.get(row.id)
                if current.pr_number is None:
                    # A PR the person opened by hand for the session's branch.
                    self.sessions.hub.publish(
                        row.id, PrOpened(url=str(pr["html_url"]), number=number, state=state)
                    )
                elif current.pr_state != state:
                    self.sessions.hub.publish(row.id, PrStateChanged(state=state))

    def _on_push(self, payload: dict[str, Any]) -> None:
        ref = str(payload.get("ref", ""))
        after = str(payload.get("after", ""))
        if not ref.startswith("refs/heads/") or after == ZERO_SHA or payload.get("deleted"):
            return
        branch = ref.removeprefix("refs/heads/")
        for repo in repos_named(self.engine, payload["repository"]["full_name"]):
            if repo.base != branch or repo.removed_at is not None:  # a removed one builds nothing
                continue
            if not self.rebuild_hooks:
                log.info("%s: base moved to %s; the next image check rebuilds", repo.name, after)
            for hook in list(self.rebuild_hooks):
                hook(spec_of(repo), after)
            if self.code_share is not None:
                self.code_share.on_push(repo.url, payload)

    # Mentions, reviews and checks: each kind goes to the service that owns it.

    def _on_issues(self, payload: dict[str, Any]) -> None:
        self._need(self.triggers, "issue").on_issues(payload)

    def _on_issue_comment(self, payload: dict[str, Any]) -> None:
        self._need(self.triggers, "comment").on_issue_comment(payload)

    def _on_pull_request_review_comment(self, payload: dict[str, Any]) -> None:
        self._need(self.triggers, "review comment").on_pull_request_review_comment(payload)

    def _on_pull_request_review(self, payload: dict[str, Any]) -> None:
        if self.pr_stats is not None:
            self.pr_stats.on_review(payload)
        self._need(self.triggers, "review").on_pull_request_review(payload)

    def _on_check_run(self, payload: dict[str, Any]) -> None:
        self._need(self.ci, "check").on_check_run(payload)

    def _on_check_suite(self, payload: dict[str, Any]) -> None:
        self._need(self.ci, "check").on_check_suite(payload)

    def _on_workflow_run(self, payload: dict[str, Any]) -> None:
        self._need(self.ci, "check").on_workflow_run(payload)

    @staticmethod
    def _need(service: _S | None, what: str) -> _S:
        if service is None:
            raise Ignored(f"{what} triggers are not set up on this server")
        return service

    def _on_installation(self, payload: dict[str, Any]) -> None:
        action = payload.get("action")
        inst = payload["installation"]
        installation_id = int(inst["id"])
        if self.app is not None:
            self.app.forget(installation_id=installation_id)
        with DB(self.engine) as db:
            if action == "deleted":
                db.exec(
                    delete(GitHubInstallation).where(col(GitHubInstallation.id) == installation_id)
                )
                db.commit()
                return
            row = db.get(GitHubInstallation, installation_id) or GitHubInstallation(
                id=installation_id, account=""
            )
            account = inst.get("account") or {}
            row.account = str(account.get("login", row.account))[:100]
            row.account_type = str(account.get("type", row.account_type))[:20]
            row.repository_selection = str(
                inst.get("repository_selection", row.repository_selection)
            )[:10]
            if "repositories" in payload:
                row.repositories = sorted(
                    str(r["full_name"]) for r in payload.get("repositories") or []
                )
            row.suspended = action == "suspend" or (
                action != "unsuspend" and bool(inst.get("suspended_at"))
            )
            row.updated_at = time.time()
            db.add(row)
            db.commit()

    def _on_installation_repositories(self, payload: dict[str, Any]) -> None:
        inst = payload["installation"]
        installation_id = int(inst["id"])
        added = [str(r["full_name"]) for r in payload.get("repositories_added") or []]
        removed = [str(r["full_name"]) for r in payload.get("repositories_removed") or []]
        if self.app is not None:
            for name in removed:
                self.app.forget(repo=name)
        with DB(self.engine) as db:
            row = db.get(GitHubInstallation, installation_id) or GitHubInstallation(
                id=installation_id, account=str((inst.get("account") or {}).get("login", ""))
            )
            current = set(row.repositories) | set(added)
            row.repositories = sorted(current - set(removed))
            row.repository_selection = str(
                payload.get("repository_selection", row.repository_selection)
            )[:10]
            row.updated_at = time.time()
            db.add(row)
            db.commit()


# ---------------------------------------------------------------- the reconciler
