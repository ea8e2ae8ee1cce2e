"""What a session's events say about it, as values for its index row (`Session`) and the
prompt's (`PromptIndex`) in the control DB. `Sessions._apply` writes them."""

from __future__ import annotations

from dataclasses import asdict

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
        for table, out in ((Session, values), (PromptIndex, prompt_values)):
            out.update(
                input_tokens=col(table.input_tokens) + event.input_tokens,
                output_tokens=col(table.output_tokens) + event.output_tokens,
                cached_tokens=col(table.cached_tokens) + event.cached_tokens,
                cost_usd=col(table.cost_usd) + (event.cost_usd or 0.0),
            )
    return values, prompt_values
