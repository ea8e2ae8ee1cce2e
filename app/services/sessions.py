"""Sessions: create, follow up, stop, read; and the runner-facing side (leases, queue).

Every client (REST, CLI, Slack, an agent's `spawn_session`) goes through this one service.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

from sqlalchemy import Engine, func, or_, update
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import Invalid, NotFound
from app.models import (
    Participant,
    PromptIndex,
    PromptPublic,
    Repo,
    Session,
    SessionPublic,
    User,
    UserPublic,
)
from app.services.hub import EventHub
from app.services.repos import Repos, spec_of
from app.services.users import Users, author_of
from app.sessionstore import Prompt, SessionFiles, SessionStore
from images.sandboxes.base import ImageRef, SnapshotRef
from workers.control import LeaseState, PromptJob, SessionContext, SessionSummary
from workers.events import (
    ACTIVE_STATUSES,
    Author,
    BranchPushed,
    ErrorRaised,
    Event,
    ModelRequest,
    Notice,
    PromptQueued,
    PrOpened,
    PrStateChanged,
    SandboxReady,
    SnapshotTaken,
    StatusChanged,
)

log = logging.getLogger("nightshift.sessions")
MAX_ATTEMPTS = 3


class Dispatch(Protocol):
    def run_session(self, session_id: str) -> None: ...
    def stop_session(self, session_id: str) -> None: ...


class PullRequestOpener(Protocol):
    def open(
        self, session: Session, repo: Repo, author: User, event: BranchPushed
    ) -> tuple[str, int, str]:
        """Open (or find) the PR for a pushed branch; returns (url, number, state)."""
        ...


class PullRequestDeferred(Exception):
    """An opener cannot open the PR yet; the message (and link) tell the person what to do.

    The session gets a `Notice` instead of an error: the branch is pushed and nothing failed.
    """

    def __init__(self, message: str, link: str | None = None) -> None:
        super().__init__(message)
        self.link = link


def _title(prompt: str) -> str:
    line = prompt.strip().splitlines()[0]
    return line[:97] + "..." if len(line) > 100 else line


def _snapshot_from(data: dict[str, object] | None) -> SnapshotRef | None:
    if not data:
        return None
    fields = dict(data)
    fields["image"] = ImageRef(**fields["image"])  # type: ignore[arg-type]
    fields["layers"] = tuple(fields.get("layers", ()))  # type: ignore[arg-type]
    return SnapshotRef(**fields)  # type: ignore[arg-type]


def _pid_alive(owner: str) -> bool:
    """For a lease owner `host-pid-x` on this host: is that process still running?"""
    host, _, rest = owner.rpartition("-")[0].rpartition("-")
    if host != socket.gethostname():
        return True  # another host: only the lease's expiry can tell
    try:
        os.kill(int(rest), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def active_snapshot_ids(engine: Engine) -> set[str]:
    """Snapshots that sessions still queued or running will start from (workers collecting
    their own snapshots ask too)."""
    with DB(engine) as db:
        rows = db.exec(
            select(Session.snapshot).where(col(Session.status).in_(list(ACTIVE_STATUSES)))
        ).all()
    return {str(snap["id"]) for snap in rows if snap and "id" in snap}


class Sessions:
    def __init__(
        self,
        engine: Engine,
        files: SessionFiles,
        hub: EventHub,
        repos: Repos,
        users: Users,
        *,
        base_url: str,
        max_prompt_chars: int,
    ) -> None:
        self.engine = engine
        self.files = files
        self.hub = hub
        self.repos = repos
        self.users = users
        self.base_url = base_url
        self.max_prompt_chars = max_prompt_chars
        self.dispatcher: Dispatch | None = None
        self.openers: dict[str, PullRequestOpener] = {}
        self.on_created: list[Callable[[Session], None]] = []
        self.sync_events: Callable[[str], object] = lambda _session_id: None
        """Persist what a session's runner published that the bus has not delivered yet.

        A no-op in-process; in distributed mode the Redis stream is drained, so the answers
        below (next prompt, conversation, lease release) see every event the runner sent.
        """
        self._pr_locks: dict[str, threading.Lock] = {}
        self._pr_locks_guard = threading.Lock()
        hub.handlers.append(self._apply)

    # ------------------------------------------------------------ helpers

    def _dispatch(self, session_id: str) -> None:
        if self.dispatcher is not None:
            self.dispatcher.run_session(session_id)

    def _check_prompt(self, text: str) -> None:
        if len(text) > self.max_prompt_chars:
            raise Invalid(
                f"prompt is {len(text)} characters; the limit is {self.max_prompt_chars} "
                "(NIGHTSHIFT_MAX_PROMPT_CHARS)"
            )

    def get(self, session_id: str) -> Session:
        with DB(self.engine) as db:
            row = db.get(Session, session_id)
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        return row

    def store(self, session_id: str) -> SessionStore:
        self.get(session_id)
        return self.files.get(session_id)

    def _join(self, db: DB, session_id: str, user_id: int, role: str) -> None:
        if db.get(Participant, (session_id, user_id)) is None:
            db.add(Participant(session_id=session_id, user_id=user_id, role=role))

    # ------------------------------------------------------------ client side

    def _index_prompt(self, session_id: str, prompt: Prompt, source: str) -> None:
        assert prompt.id is not None
        with DB(self.engine) as db:
            db.add(
                PromptIndex(
                    session_id=session_id,
                    prompt_id=prompt.id,
                    user_id=prompt.author_id,
                    source=source,
                    created_at=prompt.created_at,
                )
            )
            db.commit()

    def create(
        self,
        user: User,
        repo_name: str,
        prompt: str,
        parent_id: str | None = None,
        source: str = "api",
    ) -> Session:
        self._check_prompt(prompt)
        repo = self.repos.get(repo_name)
        depth = 0
        if parent_id is not None:
            depth = self.get(parent_id).depth + 1
        assert user.id is not None and repo.id is not None
        session_id = uuid.uuid4().hex[:12]
        store = self.files.create(session_id)
        row = Session(
            id=session_id,
            repo_id=repo.id,
            repo_name=repo.name,
            title=_title(prompt),
            author_id=user.id,
            parent_id=parent_id,
            depth=depth,
            branch=f"nightshift/{session_id}",
            prompt_count=1,
        )
        with DB(self.engine, expire_on_commit=False) as db:
            db.add(row)
            db.flush()
            self._join(db, session_id, user.id, "author")
            db.commit()
        queued, position = store.add_prompt(prompt, author_of(user))
        self._index_prompt(session_id, queued, source)
        self.hub.publish(session_id, StatusChanged(status="queued"))
        self.hub.publish(
            session_id,
            PromptQueued(
                author=author_of(user), text=prompt, position=position, prompt_id=queued.id
            ),
        )
        for callback in self.on_created:
            callback(row)
        self._dispatch(session_id)
        return row

    def add_prompt(
        self, user: User, session_id: str, text: str, source: str = "api"
    ) -> PromptPublic:
        self._check_prompt(text)
        assert user.id is not None
        with DB(self.engine, expire_on_commit=False) as db:
            row = db.get(Session, session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            row.prompt_count += 1
            row.stop_requested = False
            row.updated_at = time.time()
            db.add(row)
            self._join(db, session_id, user.id, "prompter")
            db.commit()
        store = self.files.get(session_id)
        prompt, position = store.add_prompt(text, author_of(user))
        self._index_prompt(session_id, prompt, source)
        if row.status not in ACTIVE_STATUSES:
            self.hub.publish(session_id, StatusChanged(status="queued"))
        self.hub.publish(
            session_id,
            PromptQueued(author=author_of(user), text=text, position=position, prompt_id=prompt.id),
        )
        self._dispatch(session_id)
        return self._prompt_public(prompt, position)

    def stop(self, user: User, session_id: str) -> Session:
        with DB(self.engine, expire_on_commit=False) as db:
            row = db.get(Session, session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            if row.status not in ACTIVE_STATUSES:
                return row
            row.stop_requested = True
            running = row.lease_owner is not None and (row.lease_expires_at or 0) > time.time()
            db.add(row)
            db.commit()
        self.files.get(session_id).cancel_queued()
        if self.dispatcher is not None:
            self.dispatcher.stop_session(session_id)
        if not running:
            self.hub.publish(
                session_id, StatusChanged(status="stopped", reason=f"stopped by {user.login}")
            )
        return self.get(session_id)

    def query(
        self,
        *,
        repo: str | None = None,
        status: str | None = None,
        author: str | None = None,
        parent_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Session], int]:
        query = select(Session)
        if repo:
            query = query.where(Session.repo_name == repo)
        if status:
            query = query.where(Session.status == status)
        if author:
            query = query.join(User, col(User.id) == Session.author_id).where(User.login == author)
        if parent_id:
            query = query.where(Session.parent_id == parent_id)
        with DB(self.engine) as db:
            total = db.exec(select(func.count()).select_from(query.subquery())).one()
            rows = db.exec(
                query.order_by(col(Session.created_at).desc()).offset(offset).limit(limit)
            ).all()
        return list(rows), int(total)

    def public(self, row: Session) -> SessionPublic:
        with DB(self.engine) as db:
            author = db.get(User, row.author_id)
            children = db.exec(
                select(Session.id)
                .where(Session.parent_id == row.id)
                .order_by(col(Session.created_at))
            ).all()
            participants = db.exec(
                select(User)
                .join(Participant, col(Participant.user_id) == User.id)
                .where(Participant.session_id == row.id)
                .order_by(col(Participant.joined_at))
            ).all()
        assert author is not None
        return SessionPublic(
            id=row.id,
            status=row.status,  # type: ignore[arg-type]
            repo=row.repo_name,
            title=row.title,
            author=UserPublic.model_validate(author),
            branch=row.branch,
            head_sha=row.head_sha,
            pr_url=row.pr_url,
            pr_number=row.pr_number,
            pr_state=row.pr_state,
            parent_id=row.parent_id,
            children=list(children),
            participants=[UserPublic.model_validate(p) for p in participants],
            prompt_count=row.prompt_count,
            last_event_id=self.files.get(row.id).last_event_id(),
            start_mode=row.start_mode,
            start_ms=row.start_ms,
            first_model_ms=row.first_model_ms,
            created_at=row.created_at,
            updated_at=row.updated_at,
            url=f"{self.base_url}/sessions/{row.id}",
        )

    def _prompt_public(self, prompt: Prompt, position: int | None = None) -> PromptPublic:
        author = prompt.author()
        assert prompt.id is not None
        return PromptPublic(
            id=prompt.id,
            text=prompt.text,
            author=UserPublic(
                id=author.id, login=author.login, name=author.name, email=author.email
            ),
            state=prompt.state,
            created_at=prompt.created_at,
            started_at=prompt.started_at,
            finished_at=prompt.finished_at,
            attempt=max(prompt.attempt, 1),
            position=position,
        )

    def prompts(self, session_id: str) -> list[PromptPublic]:
        out = []
        position = 0
        for prompt in self.store(session_id).prompts():
            if prompt.state == "queued":
                out.append(self._prompt_public(prompt, position))
                position += 1
            else:
                out.append(self._prompt_public(prompt))
        return out

    def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return self.store(session_id).events(after, limit)

    # ------------------------------------------------------------ applying events to the index

    def _apply(self, session_id: str, event: Event) -> None:
        values: dict[str, object] = {}
        prompt_values: dict[str, object] = {}
        if isinstance(event, StatusChanged):
            values["status"] = event.status
        elif isinstance(event, SandboxReady):
            values.update(start_mode=event.mode, start_ms=event.ms_since_prompt)
            prompt_values.update(start_mode=event.mode, start_ms=event.ms_since_prompt)
        elif isinstance(event, ModelRequest) and event.step == 1:
            values["first_model_ms"] = event.ms_since_prompt
            prompt_values["first_model_ms"] = event.ms_since_prompt
        elif isinstance(event, BranchPushed):
            values.update(head_sha=event.sha, base_sha=event.base_sha)
        elif isinstance(event, PrOpened):
            values.update(pr_url=event.url, pr_number=event.number, pr_state=event.state)
        elif isinstance(event, PrStateChanged):
            values["pr_state"] = event.state
        elif isinstance(event, SnapshotTaken):
            values["snapshot"] = asdict(event.snapshot)
        if not values:
            return
        values["updated_at"] = time.time()
        with DB(self.engine) as db:
            db.exec(update(Session).where(col(Session.id) == session_id).values(**values))  # type: ignore[call-overload]
            if prompt_values and event.prompt_id is not None:
                db.exec(  # type: ignore[call-overload]
                    update(PromptIndex)
                    .where(
                        col(PromptIndex.session_id) == session_id,
                        col(PromptIndex.prompt_id) == event.prompt_id,
                    )
                    .values(**prompt_values)
                )
            db.commit()
        if isinstance(event, BranchPushed):
            self.hub.defer(lambda: self._open_pull_request(session_id, event))

    def _pr_lock(self, session_id: str) -> threading.Lock:
        with self._pr_locks_guard:
            return self._pr_locks.setdefault(session_id, threading.Lock())

    def _open_pull_request(
        self, session_id: str, event: BranchPushed, only_if_missing: bool = False
    ) -> None:
        """Open (or update) the session's PR. Runs outside the session's publish lock (it may
        wait on the network) but under a per-session lock, so it never runs twice at once."""
        with self._pr_lock(session_id):
            row = self.get(session_id)
            if only_if_missing and row.pr_number is not None:
                return
            repo = self.repos.by_id(row.repo_id)
            opener = self.openers.get(repo.forge)
            if opener is None:
                self.hub.publish(
                    session_id,
                    ErrorRaised(
                        code="no_forge", message=f"no pull-request opener for forge {repo.forge!r}"
                    ),
                )
                return
            prompt = self.files.get(session_id).prompt(event.prompt_id) if event.prompt_id else None
            author = self.users.get(prompt.author_id if prompt else row.author_id)
            assert author is not None
            try:
                url, number, state = opener.open(row, repo, author, event)
            except PullRequestDeferred as exc:
                self.hub.publish(
                    session_id, Notice(message=str(exc), link=exc.link, prompt_id=event.prompt_id)
                )
                return
            except Exception as exc:
                log.exception("opening the PR of %s failed", session_id)
                self.hub.publish(
                    session_id,
                    ErrorRaised(
                        code="pr_failed",
                        message=f"the branch was pushed but opening the PR failed: {exc}",
                    ),
                )
                return
            with self.hub.lock(session_id):
                current = self.get(session_id)
                if current.pr_number != number or current.pr_url != url:
                    self.hub.publish(
                        session_id,
                        PrOpened(
                            url=url,
                            number=number,
                            state=state,
                            prompt_id=event.prompt_id,
                            attempt=event.attempt,
                        ),
                    )

    def retry_pull_request(self, session_id: str, only_author: int | None = None) -> bool:
        """Try again to open the PR of the session's last pushed branch (say, once its author
        has signed in). With `only_author`, only when that user prompted the push. True when
        the session has a PR afterwards."""
        store = self.store(session_id)
        pushed = None
        after = max(0, store.last_event_id() - 5000)
        for event in store.events(after, 5000):
            if isinstance(event, BranchPushed):
                pushed = event
        if pushed is None:
            return False
        if only_author is not None:
            prompt = store.prompt(pushed.prompt_id) if pushed.prompt_id else None
            author = prompt.author_id if prompt else self.get(session_id).author_id
            if author != only_author:
                return False
        self._open_pull_request(session_id, pushed, only_if_missing=True)
        return self.get(session_id).pr_number is not None

    # ------------------------------------------------------------ runner side (ControlPlane)

    def acquire_lease(self, session_id: str, runner: str, ttl: float) -> bool:
        now = time.time()
        with DB(self.engine) as db:
            result = db.exec(  # type: ignore[call-overload]
                update(Session)
                .where(col(Session.id) == session_id)
                .where(
                    or_(
                        col(Session.lease_owner).is_(None),
                        col(Session.lease_expires_at) < now,
                        col(Session.lease_owner) == runner,
                    )
                )
                .values(lease_owner=runner, lease_expires_at=now + ttl)
            )
            db.commit()
            return bool(result.rowcount == 1)

    def renew_lease(self, session_id: str, runner: str, ttl: float) -> LeaseState:
        # One statement per heartbeat: every runner sends one every few seconds.
        with self.engine.begin() as conn:
            stop = conn.execute(
                update(Session)
                .where(col(Session.id) == session_id, col(Session.lease_owner) == runner)
                .values(lease_expires_at=time.time() + ttl)
                .returning(col(Session.stop_requested))
            ).scalar_one_or_none()
        if stop is None:
            return "lost"
        return "stop" if stop else "held"

    def release_lease(self, session_id: str, runner: str) -> bool:
        self.sync_events(session_id)
        with DB(self.engine) as db:
            db.exec(  # type: ignore[call-overload]
                update(Session)
                .where(col(Session.id) == session_id, col(Session.lease_owner) == runner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            db.commit()
            row = db.get(Session, session_id)
            stopped = row is None or row.stop_requested
        return not stopped and self.files.get(session_id).pending_count() > 0

    def next_prompt(self, session_id: str, runner: str) -> PromptJob | None:
        self.sync_events(session_id)
        if self.get(session_id).stop_requested:
            return None
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

    def context(self, session_id: str) -> SessionContext:
        self.sync_events(session_id)
        row = self.get(session_id)
        repo = self.repos.by_id(row.repo_id)
        store = self.files.get(session_id)
        authors: dict[str, Author] = {}
        for prompt in store.prompts():
            authors.setdefault(prompt.author_email.lower(), prompt.author())
        return SessionContext(
            session_id=session_id,
            repo=spec_of(repo),
            branch=row.branch,
            parent_id=row.parent_id,
            depth=row.depth,
            pushed_sha=row.head_sha,
            history=store.messages(),
            authors=list(authors.values()),
            snapshot=_snapshot_from(row.snapshot),
            title=row.title,
        )

    def spawn(self, parent_id: str, repo: str | None, prompt: str, author: Author) -> str:
        parent = self.get(parent_id)
        user = self.users.get(author.id)
        if user is None:
            raise NotFound(f"unknown user {author.login!r}")
        child = self.create(
            user, repo or parent.repo_name, prompt, parent_id=parent_id, source="agent"
        )
        return child.id

    def summary(self, session_id: str) -> SessionSummary:
        self.sync_events(session_id)
        row = self.get(session_id)
        public = self.public(row)
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
        with an event saying so.
        """
        now = now or time.time()
        with DB(self.engine) as db:
            rows = db.exec(
                select(Session).where(col(Session.status).in_(list(ACTIVE_STATUSES)))
            ).all()
        dispatched = []
        for row in rows:
            if (
                row.lease_owner is not None
                and _pid_alive(row.lease_owner)
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
                db.exec(  # type: ignore[call-overload]
                    update(Session)
                    .where(col(Session.id) == row.id, col(Session.lease_owner) == row.lease_owner)
                    .values(lease_owner=None, lease_expires_at=None, attempts=Session.attempts + 1)
                )
                db.commit()
        if row.stop_requested:
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
                        f"of {MAX_ATTEMPTS}); it runs again on a fresh sandbox"
                    ),
                    prompt_id=prompt.id,
                    attempt=prompt.attempt,
                ),
            )
        if requeued or store.pending_count() > 0:
            self._dispatch(row.id)
            return True
        current = self.get(row.id)
        if current.status in ACTIVE_STATUSES and current.status != "queued":
            self.hub.publish(
                row.id, StatusChanged(status="finished", reason="recovered after restart")
            )
        return False
