"""What a session's events say about it, as values for its index row (`Session`) and the
prompt's (`PromptIndex`) in the control DB. `Sessions._apply` writes them."""

from __future__ import annotations

from dataclasses import asdict

from workers.events import (
    BranchPushed,
    Event,
    ModelRequest,
    PrOpened,
    PrStateChanged,
    SandboxReady,
    SnapshotTaken,
    StatusChanged,
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
    return values, prompt_values
