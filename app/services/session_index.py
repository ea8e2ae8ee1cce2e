"""What a session's events say about it, as values for its index row (`Session`) and the
prompt's (`PromptIndex`) in the control DB, and the `IndexWriter` that writes them."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import Engine, Update, bindparam, update
from sqlmodel import SQLModel, col

from app.group_commit import Batch, GroupCommit
from app.models import PromptIndex, Session
from app.sessionstore import SessionStore
from workers.events import (
    BranchPushed,
    ErrorRaised,
    Event,
    ModelRequest,
    PrOpened,
    PrStateChanged,
    SandboxReady,
    SnapshotTaken,
    StatusChanged,
    UsageReported,
    VerifyRan,
)

QUIET = frozenset({"last_verify", "pr_failures"})
"""Columns whose change does not make the session `updated_at` (they never did)."""


def index_values(event: Event) -> tuple[dict[str, object], dict[str, object]]:
    """The session row's and the prompt row's new values for `event` (empty: nothing to do)."""
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
        values.update(
            head_sha=event.sha, base_sha=event.base_sha, last_push=event.model_dump(mode="json")
        )
    elif isinstance(event, VerifyRan):
        values["last_verify"] = event.model_dump(mode="json")
    elif isinstance(event, ErrorRaised) and event.code == "pr_failed":
        values["pr_failures"] = Increment(1)
    elif isinstance(event, PrOpened):
        values.update(pr_url=event.url, pr_number=event.number, pr_state=event.state)
    elif isinstance(event, PrStateChanged):
        values["pr_state"] = event.state
    elif isinstance(event, SnapshotTaken):
        values["snapshot"] = asdict(event.snapshot)
    elif isinstance(event, UsageReported):
        # Increments, not values: every model turn adds its usage to the totals.
        for out in (values, prompt_values):
            out.update(
                input_tokens=Increment(event.input_tokens),
                output_tokens=Increment(event.output_tokens),
                cached_tokens=Increment(event.cached_tokens),
                cost_usd=Increment(event.cost_usd or 0.0),
            )
    return values, prompt_values


def replay_columns(store: SessionStore) -> dict[str, object]:
    """`last_push`, `last_verify` and `pr_failures` as the session's whole event log says:
    for a row from before they were columns (revision 0014)."""
    values: dict[str, object] = {"last_push": None, "last_verify": None, "pr_failures": 0}
    failures = 0
    for event in store.events_of(["branch_pushed", "verify", "error"]):
        if isinstance(event, BranchPushed):
            values["last_push"] = event.model_dump(mode="json")
        elif isinstance(event, VerifyRan):
            values["last_verify"] = event.model_dump(mode="json")
        elif isinstance(event, ErrorRaised) and event.code == "pr_failed":
            failures += 1
    values["pr_failures"] = failures
    return values


def verify_before(store: SessionStore, head_sha: str) -> dict[str, Any] | None:
    """The last `verify` event before the push of `head_sha`, from the session's whole log:
    the checks of a local PR from before revision 0014 kept them on its row."""
    last: VerifyRan | None = None
    found: VerifyRan | None = None
    for event in store.events_of(["verify", "branch_pushed"]):
        if isinstance(event, VerifyRan):
            last = event
        elif isinstance(event, BranchPushed) and event.sha == head_sha:
            found = last
    return found.model_dump(mode="json") if found is not None else None


@dataclass(frozen=True)
class Increment:
    """Add `amount` to the column (the usage totals) instead of setting it; two increments of
    one batch add up."""

    amount: float


def _merge(into: dict[str, object], values: dict[str, object]) -> None:
    for key, value in values.items():
        old = into.get(key)
        if isinstance(old, Increment) and isinstance(value, Increment):
            into[key] = Increment(old.amount + value.amount)
        else:
            into[key] = value


Signature = tuple[tuple[str, bool], ...]
"""The columns one row's values set, each with whether it is an increment."""


def _signature(values: dict[str, object]) -> Signature:
    return tuple(sorted((key, isinstance(value, Increment)) for key, value in values.items()))


@cache
def _update(table: type[Session] | type[PromptIndex], signature: Signature) -> Update:
    """The UPDATE of one row of `table` by its key, setting the columns of `signature` from
    bound parameters: built once per shape, so a batch is an executemany of a statement whose
    compiled form SQLAlchemy keeps."""
    columns = SQLModel.metadata.tables[str(table.__tablename__)].c
    sets: dict[str, Any] = {}
    for key, increment in signature:
        value = bindparam(f"v_{key}", type_=columns[key].type)
        sets[key] = columns[key] + value if increment else value
    if table is Session:
        where = [columns["id"] == bindparam("k_id")]
    else:
        where = [
            columns["session_id"] == bindparam("k_session"),
            columns["prompt_id"] == bindparam("k_prompt"),
        ]
    return update(table).where(*where).values(sets)


def _params(values: dict[str, object]) -> dict[str, object]:
    return {
        f"v_{key}": value.amount if isinstance(value, Increment) else value
        for key, value in values.items()
    }


@dataclass
class _Batch:
    sessions: dict[str, dict[str, object]] = field(default_factory=dict)
    prompts: dict[tuple[str, int], dict[str, object]] = field(default_factory=dict)


Staged = Batch[_Batch, None]
"""A batch of index values being gathered or written: what `wait` waits for."""


class IndexWriter:
    """Applies events to the index with group commit (`app/group_commit.py`): one control DB
    transaction per batch.

    `apply` returns once its values are written (a reader right after it sees them), but
    callers that arrive while a batch is being written do not each open a transaction of
    their own: their values join the next batch, coalesced per session (the last value of a
    column wins, as it would have anyway). Under a burst of events from many sessions the
    control DB then sees a few transactions instead of one per event.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._commits: GroupCommit[_Batch, None] = GroupCommit(_Batch, self._write)
        self._local = threading.local()

    @property
    def batches(self) -> int:
        """Transactions written so far."""
        return self._commits.batches

    def apply(self, session_id: str, event: Event) -> None:
        """Write the event's values; returns once they are written. On a thread that is
        `staging` (the event writer's), they only join the pending batch."""
        batch = self.stage(session_id, event)
        if batch is None:
            return
        if getattr(self._local, "staging", False):
            self._local.staged = batch
            return
        self.wait(batch)

    def stage(self, session_id: str, event: Event) -> Staged | None:
        """Add the event's values to the pending batch; returns that batch (for `wait`), None
        when the event changes nothing in the index."""
        values, prompt_values = index_values(event)
        if not values:
            return None
        if not values.keys() <= QUIET:
            values["updated_at"] = time.time()

        def put(pending: _Batch) -> None:
            _merge(pending.sessions.setdefault(session_id, {}), values)
            if prompt_values and event.prompt_id is not None:
                key = (session_id, event.prompt_id)
                _merge(pending.prompts.setdefault(key, {}), prompt_values)

        return self._commits.add(put)

    def begin_staging(self) -> None:
        """From now on `apply` on this thread stages instead of writing (see `end_staging`)."""
        self._local.staging = True
        self._local.staged = None

    def end_staging(self) -> Staged | None:
        """Stop staging on this thread; returns the newest batch it staged into (None: none),
        for `wait`: once it is written, so is every batch before it."""
        staged: Staged | None = self._local.staged
        self._local.staging = False
        self._local.staged = None
        return staged

    def wait(self, batch: Staged) -> None:
        """Return once `batch` is written (raising what failed it)."""
        self._commits.wait(batch)

    def _write(self, batch: _Batch) -> None:
        groups: defaultdict[
            tuple[type[Session] | type[PromptIndex], Signature], list[dict[str, object]]
        ] = defaultdict(list)
        for session_id, values in batch.sessions.items():
            groups[(Session, _signature(values))].append({"k_id": session_id, **_params(values)})
        for (session_id, prompt_id), values in batch.prompts.items():
            groups[(PromptIndex, _signature(values))].append(
                {"k_session": session_id, "k_prompt": prompt_id, **_params(values)}
            )
        with self.engine.begin() as conn:
            for (table, signature), rows in groups.items():
                conn.execute(_update(table, signature), rows)

    def fill_from_log(self, row: Session, store: SessionStore) -> Session:
        """The row with the columns of 0014 filled from the session's events, once, when it
        predates them (a `head_sha` but no `last_push`); any other row is returned as it is.

        Done on first read rather than in the migration: the process that reads the row holds
        the session file (the migrating one may not), and the migration lock is not held
        while thousands of files are read."""
        if row.head_sha is None or row.last_push is not None:
            return row
        values = replay_columns(store)
        if values["last_push"] is None:
            return row  # the pushed event is gone (a file restored from before the push)
        with self.engine.begin() as conn:
            conn.execute(
                update(Session)
                .where(col(Session.id) == row.id, col(Session.last_push).is_(None))
                .values(**values)
            )
        for key, value in values.items():
            setattr(row, key, value)
        return row
