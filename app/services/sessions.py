"""Sessions: create, follow up, stop, read; and the index of what their events say.

Every client (REST, CLI, Slack, an agent's `spawn_session`) goes through this one service.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Row, func, text
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.db import reader
from app.errors import Invalid, NotFound, TooMany, Unavailable
from app.models import Participant, PromptIndex, Session, User
from app.schemas import PromptPublic, SessionPublic
from app.services import session_views
from app.services.event_writer import publish_together
from app.services.hub import EventHub
from app.services.model_choices import ModelChoices
from app.services.peers import SessionPeers
from app.services.repos import Repos
from app.services.session_index import IndexWriter
from app.services.session_rows import active_count_query, columns_query, insert_rows
from app.services.users import Users, author_of
from app.session_tables import Prompt
from app.sessionstore import SessionFiles, SessionStore
from workers.events import (
    ACTIVE_STATUSES,
    Event,
    PromptQueued,
    StatusChanged,
)

log = logging.getLogger("nightshift.sessions")
_CAP_LOCK = 0x6E73_0000_0000
"""Advisory-lock keys of the per-user session cap: this plus the user id (PostgreSQL)."""


class Dispatch(Protocol):
    def run_session(self, session_id: str) -> None: ...
    def stop_session(self, session_id: str) -> None: ...


def _title(prompt: str) -> str:
    line = prompt.strip().splitlines()[0]
    return line[:97] + "..." if len(line) > 100 else line


class Sessions:
    def __init__(
        self,
        engine: Engine,
        files: SessionFiles,
        hub: EventHub,
        repos: Repos,
        users: Users,
        index: IndexWriter,
        dispatcher: Dispatch | None,
        *,
        base_url: str,
        max_prompt_chars: int,
        max_active_per_user: int = 20,
        models: ModelChoices | None = None,
        peers: SessionPeers | None = None,
    ) -> None:
        self.engine = engine
        self.peers = peers
        """Several API processes: the creating process owns a new session; a follow-up or a
        stop of a session another process owns is sent to that process."""
        self.files = files
        self.hub = hub
        self.repos = repos
        self.users = users
        self.base_url = base_url
        self.max_prompt_chars = max_prompt_chars
        self.max_active_per_user = max_active_per_user
        """Sessions one author may have not yet over (queued, starting, running or idle)."""
        self.models = models or ModelChoices(())
        self.dispatcher = dispatcher
        """Runs a session's queued prompts (None: they stay queued, e.g. for tests)."""
        self.index = index
        """Applies events to the index; the composition root's event table calls it."""

    # ------------------------------------------------------------ helpers

    def dispatch(self, session_id: str) -> None:
        if self.dispatcher is not None:
            self.dispatcher.run_session(session_id)

    def _check_prompt(self, text: str) -> str:
        """The prompt as stored: credentials this server knows are redacted before it reaches
        the session file, its title, its events or the model."""
        if len(text) > self.max_prompt_chars:
            raise Invalid(
                f"prompt is {len(text)} characters; the limit is {self.max_prompt_chars} "
                "(NIGHTSHIFT_MAX_PROMPT_CHARS)"
            )
        return self.files.redactor.text(text)

    def active_count(self, user_id: int, db: DB | Connection | None = None) -> int:
        """Sessions of `user_id` that are not over: queued, starting, running or idle."""
        if db is None:
            with DB(self.engine) as own:
                return self.active_count(user_id, own)
        return int(db.execute(active_count_query(), {"author": user_id}).scalar_one())

    def _check_active(self, user: User, db: DB | Connection | None = None) -> None:
        """Refuse one more active session past NIGHTSHIFT_MAX_SESSIONS_PER_USER.

        Given the transaction that will add or wake the session, the count and that write are
        one step: on PostgreSQL a transaction-scoped advisory lock per user serialises them
        across API processes; on SQLite the write transaction (BEGIN IMMEDIATE) already holds
        the database's write lock from its first statement. Two creations at once can then
        never both pass with one slot left.
        """
        assert user.id is not None
        if db is not None and self.engine.dialect.name == "postgresql":
            db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CAP_LOCK + user.id})
        active = self.active_count(user.id, db)
        if active >= self.max_active_per_user:
            raise TooMany(
                f"you have {active} sessions that are not over, the most one person may have "
                f"(NIGHTSHIFT_MAX_SESSIONS_PER_USER={self.max_active_per_user}); stop one or "
                "wait for one to finish"
            )

    def stop_requested(self, session_id: str) -> bool:
        """Whether a stop was asked for (the one column a runner checks between prompts)."""
        return bool(self.columns(session_id, "stop_requested").stop_requested)

    def columns(self, session_id: str, *names: str) -> Row[Any]:
        """Some columns of the session's index row (by name), read without an ORM row: for
        hot paths that need a few of them."""
        with reader(self.engine).connect() as conn:
            row = conn.execute(columns_query(names), {"id": session_id}).one_or_none()
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        return row

    def check(self, session_id: str) -> None:
        """NotFound unless the session exists (one indexed column read, no ORM row)."""
        self.columns(session_id, "id")

    def get(self, session_id: str) -> Session:
        with DB(reader(self.engine)) as db:
            row = db.get(Session, session_id)
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        return row

    def store(self, session_id: str) -> SessionStore:
        self.check(session_id)
        try:
            return self.files.get(session_id)
        except FileNotFoundError:
            raise Unavailable(
                f"session {session_id} is indexed but its file is not in this server's data "
                f"dir ({self.files.root}); is NIGHTSHIFT_DATA_DIR the one it was created with?"
            ) from None

    def _last_event_id(self, session_id: str) -> int:
        """0 for a session whose file is not here (indexed by a control DB shared with another
        data dir): the list still answers."""
        try:
            return self.files.get(session_id).last_event_id()
        except FileNotFoundError:
            return 0

    def _join(self, db: DB, session_id: str, user_id: int, role: str) -> None:
        if db.get(Participant, (session_id, user_id)) is None:
            db.add(Participant(session_id=session_id, user_id=user_id, role=role))

    # ------------------------------------------------------------ client side

    def _index_prompt(self, session_id: str, prompt: Prompt, source: str) -> None:
        with DB(self.engine) as db:
            db.add(self._prompt_row(session_id, prompt, source))
            db.commit()

    @staticmethod
    def _prompt_row(session_id: str, prompt: Prompt, source: str) -> PromptIndex:
        assert prompt.id is not None
        return PromptIndex(
            session_id=session_id,
            prompt_id=prompt.id,
            user_id=prompt.author_id,
            source=source,
            created_at=prompt.created_at,
        )

    def create(
        self,
        user: User,
        repo_name: str,
        prompt: str,
        parent_id: str | None = None,
        source: str = "api",
        model: str | None = None,
    ) -> Session:
        prompt = self._check_prompt(prompt)
        chosen = self.models.choose(model)
        repo = self.repos.get(repo_name)
        depth = 0
        if parent_id is not None:
            depth = self.get(parent_id).depth + 1
        assert user.id is not None and repo.id is not None
        session_id = uuid.uuid4().hex[:12]
        store = self.files.create(session_id)
        author = author_of(user)
        try:
            # The file is this request's alone until the row below makes the session exist:
            # its prompt goes in first, so the row and the prompt's index entry are one commit.
            queued, position = store.add_prompt(prompt, author)
        except BaseException:
            self.files.discard(session_id)
            raise
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
            model=chosen,
        )
        participant = Participant(session_id=session_id, user_id=user.id, role="author")
        prompt_row = self._prompt_row(session_id, queued, source)
        try:
            with self.engine.begin() as conn:  # the write lock, from the count to the commit
                self._check_active(user, conn)  # atomically with the insert
                # In the same transaction, once the count has passed: never unowned.
                owner = [self.peers.owners.new_row(session_id)] if self.peers is not None else []
                insert_rows(conn, row, *owner, participant, prompt_row)  # the row first
        except BaseException:
            self.files.discard(session_id)
            raise
        queued_event = PromptQueued(
            author=author, text=prompt, position=position, prompt_id=queued.id
        )
        publish_together(
            self.hub, self.index, session_id, [StatusChanged(status="queued"), queued_event]
        )
        self.dispatch(session_id)
        return row

    def add_prompt(
        self, user: User, session_id: str, text: str, source: str = "api"
    ) -> PromptPublic:
        text = self._check_prompt(text)
        assert user.id is not None
        if self.peers is not None and (peer := self.peers.local(session_id)) is not None:
            body = {"user_id": user.id, "text": text, "source": source}
            return PromptPublic.model_validate(self.peers.call(peer, session_id, "prompts", body))
        with DB(self.engine, expire_on_commit=False) as db:
            row = db.get(Session, session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            self.repos.check_open(row.repo_id)  # a removed repo takes no follow-ups
            woken = row.status not in ACTIVE_STATUSES
            if woken:
                self._check_active(user, db)  # a follow-up wakes a session that was over
                row.status = "queued"
            row.prompt_count += 1
            row.stop_requested = False
            row.updated_at = time.time()
            db.add(row)
            self._join(db, session_id, user.id, "prompter")
            db.commit()
        store = self.files.get(session_id)
        prompt, position = store.add_prompt(text, author_of(user))
        self._index_prompt(session_id, prompt, source)
        if woken:
            self.hub.publish(session_id, StatusChanged(status="queued"))
        self.hub.publish(
            session_id,
            PromptQueued(author=author_of(user), text=text, position=position, prompt_id=prompt.id),
        )
        self.dispatch(session_id)
        return self._prompt_public(prompt, position)

    def stop(self, user: User, session_id: str) -> Session:
        if self.peers is not None and (peer := self.peers.local(session_id)) is not None:
            self.peers.call(peer, session_id, "stop", {"user_id": user.id})
            return self.get(session_id)
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
        with DB(reader(self.engine)) as db:
            total = db.exec(select(func.count()).select_from(query.subquery())).one()
            rows = db.exec(
                query.order_by(col(Session.created_at).desc()).offset(offset).limit(limit)
            ).all()
        return list(rows), int(total)

    def changed_since(self, since: float) -> list[tuple[str, float]]:
        """Sessions whose index row changed after `since` (by any API process), with when."""
        with DB(self.engine) as db:
            rows = db.exec(
                select(Session.id, Session.updated_at).where(col(Session.updated_at) > since)
            ).all()
        return [(str(r[0]), float(r[1])) for r in rows]

    def public(self, row: Session) -> SessionPublic:
        return self.public_many([row])[0]

    def public_new(self, row: Session, author: User) -> SessionPublic:
        """`public` of a session `create` just returned, by `author`, without a query."""
        return session_views.public_new(row, author, self._last_event_id(row.id), self.base_url)

    def public_many(self, rows: Sequence[Session]) -> list[SessionPublic]:
        """The public shape of several sessions: three queries however many rows."""
        return session_views.public_many(
            reader(self.engine), rows, self._last_event_id, self.base_url
        )

    def _prompt_public(self, prompt: Prompt, position: int | None = None) -> PromptPublic:
        return session_views.prompt_public(self.files.redactor, prompt, position)

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
        """Stored events after `after`, up to those whose index values are written (a client
        that has seen an event reads a session that reflects it, as on its streams)."""
        events = self.store(session_id).events(after, limit)
        until = self.hub.listed_until(session_id)
        if until is None:
            return events
        return [e for e in events if e.id is not None and e.id <= until]
