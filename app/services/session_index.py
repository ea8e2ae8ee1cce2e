"""What a session's events say about it, as values for its index row (`Session`) and the
prompt's (`PromptIndex`) in the control DB, and the `IndexWriter` that writes them."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine, update
from sqlmodel import col

from app.models import PromptIndex, Session
from workers.events import (
    BranchPushed,
    Event,
    ModelRequest,
    PrOpened,
    PrStateChanged,
    SandboxReady,
    SnapshotTaken,
    StatusChanged,
    UsageReported,
)


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
        values.update(head_sha=event.sha, base_sha=event.base_sha)
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


def _sql(table: type[Session] | type[PromptIndex], values: dict[str, object]) -> dict[str, object]:
    return {
        key: col(getattr(table, key)) + value.amount if isinstance(value, Increment) else value
        for key, value in values.items()
    }


@dataclass
class _Batch:
    sessions: dict[str, dict[str, object]] = field(default_factory=dict)
    prompts: dict[tuple[str, int], dict[str, object]] = field(default_factory=dict)


class IndexWriter:
    """Applies events to the index with group commit: one control DB transaction per batch.

    `apply` returns once its values are written (a reader right after it sees them), but
    callers that arrive while a batch is being written do not each open a transaction of
    their own: the next caller to find the writer free writes everything queued meanwhile,
    coalesced per session (the last value of a column wins, as it would have anyway), and
    wakes the others. Under a burst of events from many sessions the control DB then sees a
    few transactions instead of one per event, and its write lock is held that much less.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._pending = _Batch()
        self._generation = 0
        """The batch that `apply` adds to now."""
        self._written = 0
        """Every batch before this one is written (or failed: it was logged)."""
        self._writing = False
        self.batches = 0
        """Transactions written so far."""

    def apply(self, session_id: str, event: Event) -> None:
        values, prompt_values = index_values(event)
        if not values:
            return
        values["updated_at"] = time.time()
        with self._cond:
            _merge(self._pending.sessions.setdefault(session_id, {}), values)
            if prompt_values and event.prompt_id is not None:
                key = (session_id, event.prompt_id)
                _merge(self._pending.prompts.setdefault(key, {}), prompt_values)
            mine = self._generation
            while self._written <= mine:
                if not self._writing:
                    break
                self._cond.wait()
            else:
                return  # a batch written by another caller held ours
            self._writing = True
            batch, self._pending = self._pending, _Batch()
            self._generation += 1
        try:
            self._write(batch)
        finally:
            with self._cond:
                self._writing = False
                self._written = mine + 1
                self.batches += 1
                self._cond.notify_all()

    def _write(self, batch: _Batch) -> None:
        with self.engine.begin() as conn:
            for session_id, values in batch.sessions.items():
                conn.execute(
                    update(Session)
                    .where(col(Session.id) == session_id)
                    .values(**_sql(Session, values))
                )
            for (session_id, prompt_id), values in batch.prompts.items():
                conn.execute(
                    update(PromptIndex)
                    .where(
                        col(PromptIndex.session_id) == session_id,
                        col(PromptIndex.prompt_id) == prompt_id,
                    )
                    .values(**_sql(PromptIndex, values))
                )
