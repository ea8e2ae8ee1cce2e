"""The runner-facing side of sessions (the `ControlPlane` port): leases, the prompt queue,
a run's context, and recovery of sessions whose runner died."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Engine, Row, update
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import NotFound
from app.liveness import owner_alive
from app.models import Session
from app.services.leases import LeaseRenewals
from app.services.ownership import Ownership
from app.services.session_rows import lease_update
from app.services.sessions import Sessions
from images.sandboxes.base import SnapshotRef
from workers.control import LeaseState, PromptJob, RunStart, SessionContext, SessionSummary
from workers.events import (
    ACTIVE_STATUSES,
    Author,
    ErrorRaised,
    Event,
    Notice,
    StatusChanged,
)

log = logging.getLogger("nightshift.runners")
MAX_ATTEMPTS = 3
SNAPSHOT_REF = TypeAdapter(SnapshotRef)
"""A stored snapshot reference (its image nested, its layers a list in JSON) read back."""


def _snapshot_from(data: dict[str, object] | None) -> SnapshotRef | None:
    if not data:
        return None
    return SNAPSHOT_REF.validate_python(data)


def active_snapshot_ids(engine: Engine) -> set[str]:
    """Snapshots that sessions still queued or running will start from (workers collecting
    their own snapshots ask too)."""
    with DB(engine) as db:
        rows = db.exec(
            select(Session.snapshot).where(col(Session.status).in_(list(ACTIVE_STATUSES)))
        ).all()
    return {str(snap["id"]) for snap in rows if snap and "id" in snap}


CONTEXT_COLUMNS = (
    "repo_id",
    "branch",
    "parent_id",
    "depth",
    "head_sha",
    "snapshot",
    "title",
    "model",
)
"""The index columns a run's context reads."""
START_COLUMNS = ("stop_requested", *CONTEXT_COLUMNS)
"""What taking a run's lease returns: the stop flag, then the context's columns."""


class RunnerService:
    """What runners ask of the control plane, answered from the control DB and session files.

    In-process runners call it directly (`app/local_control.py`); workers over `/internal`.
    """

    def __init__(
        self,
        sessions: Sessions,
        sync_events: Callable[[str], object] = lambda _session_id: None,
        owners: Ownership | None = None,
    ) -> None:
        self.sessions = sessions
        self.owners = owners
        """Several API processes: runners here run only sessions this process owns."""
        self.engine = sessions.engine
        self.files = sessions.files
        self.hub = sessions.hub
        self._orphans: set[str] = set()
        self.leases = LeaseRenewals(self.engine)
        self.sync_events = sync_events
        """Persist what a session's runner published that the bus has not delivered yet.

        A no-op in-process; in distributed mode the Redis stream is drained, so the answers
        below (next prompt, conversation, lease release) see every event the runner sent.
        """

    def _foreign(self, session_id: str) -> bool:
        """Owned by another API process (several of them): no runner of ours may run it."""
        return self.owners is not None and not self.owners.holds(session_id)

    def acquire_lease(self, session_id: str, runner: str, ttl: float) -> bool:
        if self._foreign(session_id):
            return False
        return self._lease(session_id, runner, ttl, ("id",)) is not None

    def _lease(
        self, session_id: str, runner: str, ttl: float, columns: tuple[str, ...]
    ) -> Row[Any] | None:
        """Take the lease in one statement; those columns of the row, None if it is not ours."""
        now = time.time()
        params = {"k_id": session_id, "runner": runner, "now": now, "expires": now + ttl}
        with self.engine.begin() as conn:
            return conn.execute(lease_update(columns), params).one_or_none()

    def renew_lease(self, session_id: str, runner: str, ttl: float) -> LeaseState:
        if self._foreign(session_id):
            return "lost"  # another process claimed the session: its runner takes over
        # Heartbeats of many runners arrive together: one statement renews them all.
        return self.leases.renew(session_id, runner, ttl)

    def renew_leases(
        self, batch: dict[tuple[str, str], float]
    ) -> dict[tuple[str, str], LeaseState]:
        """Renew many runners' leases ((session, runner) -> ttl) in one statement."""
        mine = {key: ttl for key, ttl in batch.items() if not self._foreign(key[0])}
        answers = self.leases.renew_many(mine) if mine else {}
        return {key: answers.get(key, "lost") for key in batch}

    def release_lease(self, session_id: str, runner: str) -> bool:
        self.sync_events(session_id)
        with self.engine.begin() as conn:
            conn.execute(
                update(Session)
                .where(col(Session.id) == session_id, col(Session.lease_owner) == runner)
                .values(lease_owner=None, lease_expires_at=None)
            )
        try:
            stopped = self.sessions.stop_requested(session_id)
        except NotFound:
            return False
        return not stopped and self.files.get(session_id).pending_count() > 0

    def next_prompt(self, session_id: str, runner: str) -> PromptJob | None:
        self.sync_events(session_id)
        if self.sessions.stop_requested(session_id):
            return None
        return self._claim(session_id, runner)

    def _claim(self, session_id: str, runner: str) -> PromptJob | None:
        store = self.files.get(session_id)
        # Runners report a prompt finished before they ask for the next one, so a prompt this
        # runner still holds means its first answer was lost on the way: hand it back again.
        prompt = store.running_by(runner) or store.claim_next(runner)
        if prompt is None:
            return None
        assert prompt.id is not None
        return PromptJob(
            id=prompt.id,
            text=prompt.text,
            author=prompt.author(),
            created_at=prompt.created_at,
            attempt=prompt.attempt,
        )

    def start_run(self, session_id: str, runner: str, ttl: float) -> RunStart:
        """The lease, then the first prompt and its context (`ControlPlane.start_run`).

        What the previous run published is persisted first; then one statement takes the lease
        and reads the stop flag and the context's columns, as they stand when it is taken."""
        if self._foreign(session_id):
            return RunStart(leased=False)
        self.sync_events(session_id)
        row = self._lease(session_id, runner, ttl, START_COLUMNS)
        if row is None:
            return RunStart(leased=False)
        if row.stop_requested:
            return RunStart(leased=True)
        job = self._claim(session_id, runner)
        if job is None:
            return RunStart(leased=True)
        return RunStart(leased=True, job=job, context=self._context(session_id, row))

    def context(self, session_id: str) -> SessionContext:
        self.sync_events(session_id)
        return self._context(session_id, self.sessions.columns(session_id, *CONTEXT_COLUMNS))

    def _context(self, session_id: str, row: Row[Any]) -> SessionContext:
        spec = self.sessions.repos.spec_by_id(row.repo_id)
        store = self.files.get(session_id)
        authors: dict[str, Author] = {}
        for author in store.authors():
            authors.setdefault(author.email.lower(), author)
        return SessionContext(
            session_id=session_id,
            repo=spec,
            branch=row.branch,
            parent_id=row.parent_id,
            depth=row.depth,
            pushed_sha=row.head_sha,
            history=store.messages(),
            authors=list(authors.values()),
            snapshot=_snapshot_from(row.snapshot),
            title=row.title,
            model=row.model,
        )

    def stored_events(
        self, session_id: str, types: list[str], prompt_id: int | None = None
    ) -> list[Event]:
        self.sync_events(session_id)
        return self.files.get(session_id).events_of(types, prompt_id)

    def spawn(
        self,
        parent_id: str,
        repo: str | None,
        prompt: str,
        author: Author,
        model: str | None = None,
    ) -> str:
        parent = self.sessions.get(parent_id)
        user = self.sessions.users.get(author.id)
        if user is None:
            raise NotFound(f"unknown user {author.login!r}")
        child = self.sessions.create(
            user,
            repo or parent.repo_name,
            prompt,
            parent_id=parent_id,
            source="agent",
            model=model or self._inherited_model(parent.model),
        )
        return child.id

    def _inherited_model(self, model: str | None) -> str | None:
        """The parent's model for a child, or the default once the operator stopped offering it
        (a child must not fail for what its parent was allowed)."""
        return model if model in self.sessions.models.specs else None

    def summary(self, session_id: str) -> SessionSummary:
        self.sync_events(session_id)
        row = self.sessions.get(session_id)
        public = self.sessions.public(row)
        last = []
        for event in self.files.get(session_id).events(max(0, public.last_event_id - 200), 200):
            if event.type in ("status", "prompt_finished", "error", "branch_pushed", "pr_opened"):
                last.append(
                    f"#{event.id} {event.type}: {event.model_dump_json(exclude={'id', 'ts', 'type'})[:200]}"
                )
        return SessionSummary(
            id=row.id,
            status=row.status,
            repo=row.repo_name,
            branch=row.branch if row.head_sha else None,
            pr_url=row.pr_url,
            pr_state=row.pr_state,
            parent_id=row.parent_id,
            children=public.children,
            last_events=last[-10:],
        )

    def active_snapshot_ids(self) -> set[str]:
        """Snapshots that sessions still queued or running will start from."""
        return active_snapshot_ids(self.engine)

    # ------------------------------------------------------------ recovery

    def reap(self, now: float | None = None, *, trust_expiry: bool = True) -> list[str]:
        """Hand sessions whose runner died back to a runner; returns the ids dispatched.

        A runner is dead when its lease expired, or at once when it ran on this host and its
        process is gone. With `trust_expiry=False` (just after this process started, when
        leases may have lapsed only because nobody could renew them) an expired lease whose
        runner may still be alive is left alone. A prompt interrupted MAX_ATTEMPTS times fails
        with an event saying so. With several API processes only this process's sessions are
        looked at, and first those a dead process owned are claimed (`Ownership.claim_all`).
        """
        now = now or time.time()
        with DB(self.engine) as db:
            rows = db.exec(
                select(Session).where(col(Session.status).in_(list(ACTIVE_STATUSES)))
            ).all()
        if self.owners is not None:  # ours, and those a dead process left, which we claim
            owned = self.owners.claim_all(row.id for row in rows)
            rows = [row for row in rows if row.id in owned]
        dispatched = []
        for row in rows:
            if not self.files.path(row.id).exists():
                # Indexed in a control DB shared with another data dir (or its file was
                # removed): nothing here can recover it. Said once, not every round.
                if row.id not in self._orphans:
                    self._orphans.add(row.id)
                    log.warning(
                        "session %s is %s in the control DB but has no file under %s; left alone",
                        row.id,
                        row.status,
                        self.files.root,
                    )
                continue
            if (
                row.lease_owner is not None
                and owner_alive(row.lease_owner)
                and ((row.lease_expires_at or 0) >= now or not trust_expiry)
            ):
                continue
            try:
                if self._recover(row):
                    dispatched.append(row.id)
            except Exception:
                log.exception("recovering session %s failed; retrying next round", row.id)
        return dispatched

    def _recover(self, row: Session) -> bool:
        self.sync_events(row.id)  # the dead runner's last events land before we judge
        store = self.files.get(row.id)
        if row.lease_owner is not None:
            with DB(self.engine) as db:
                db.exec(
                    update(Session)
                    .where(col(Session.id) == row.id, col(Session.lease_owner) == row.lease_owner)
                    .values(lease_owner=None, lease_expires_at=None, attempts=Session.attempts + 1)
                )
                db.commit()
        # The session's file is ahead of its row: a runner that ended its run and gave its
        # lease back may have had its last status written there but not yet indexed.
        statuses = store.events_of(["status"])
        last = statuses[-1].status if statuses and isinstance(statuses[-1], StatusChanged) else None
        if row.stop_requested:
            if last == "stopped":  # stopped by its runner, which let go: nothing to recover
                return False
            store.fail_running("stopped")
            self.hub.publish(
                row.id,
                StatusChanged(status="stopped", reason="stopped while its runner was gone"),
            )
            return False
        requeued = store.requeue_running()
        exhausted = [p for p in requeued if p.attempt >= MAX_ATTEMPTS]
        if exhausted:
            store.fail_running("too many attempts")
            self.hub.publish(
                row.id,
                ErrorRaised(
                    code="attempts_exhausted",
                    message=f"the runner of this session died {MAX_ATTEMPTS} times; giving up",
                    prompt_id=exhausted[0].id,
                    attempt=exhausted[0].attempt,
                ),
            )
            self.hub.publish(
                row.id, StatusChanged(status="failed", reason="runner died repeatedly")
            )
            return False
        for prompt in requeued:
            self.hub.publish(
                row.id,
                Notice(
                    message=(
                        f"the runner of prompt #{prompt.id} stopped (attempt {prompt.attempt} "
                        f"of {MAX_ATTEMPTS}); it runs again, resuming from its last completed turn"
                    ),
                    prompt_id=prompt.id,
                    attempt=prompt.attempt,
                ),
            )
        if requeued or store.pending_count() > 0:
            self.sessions.dispatch(row.id)
            return True
        current = last or self.sessions.get(row.id).status
        if current in ACTIVE_STATUSES and current != "queued":
            self.hub.publish(
                row.id, StatusChanged(status="finished", reason="recovered after restart")
            )
        return False
