"""Prometheus metrics, fed by the event hub (one handler sees every persisted event) and by the
prompt backlog (`app/overload.py`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from workers.events import Event, ModelRequest, PromptFinished, PromptQueued, SandboxReady

EVENTS = Counter("nightshift_events_total", "Events persisted", ["type"])
PROMPTS = Counter("nightshift_prompts_total", "Prompts queued")
BUS_EVENTS = Counter("nightshift_bus_events_total", "Events persisted from Redis streams")
BUS_LAG = Histogram(
    "nightshift_bus_lag_seconds",
    "Event created on a worker to persisted and fanned out by the API",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TAKING_IN = Gauge(
    "nightshift_prompts_taking_in",
    "New sessions and follow-ups being taken in (backlog slots used)",
)
SHED = Counter(
    "nightshift_prompts_shed_total", "New sessions and follow-ups answered 503 (backlog full)"
)
DEFERRED = Counter(
    "nightshift_prompts_deferred_total",
    "Prompts not sent over HTTP (Slack) that found the backlog full and waited for a slot",
)
PROMPTS_FINISHED = Counter("nightshift_prompts_finished_total", "Prompts finished", ["outcome"])
SANDBOX_READY = Histogram(
    "nightshift_sandbox_ready_seconds",
    "Prompt received to sandbox ready",
    ["mode"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
FIRST_MODEL_REQUEST = Histogram(
    "nightshift_first_model_request_seconds",
    "Prompt received to first model request",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def observe(session_id: str, event: Event) -> None:
    EVENTS.labels(event.type).inc()
    if isinstance(event, PromptQueued):
        PROMPTS.inc()
    elif isinstance(event, PromptFinished):
        PROMPTS_FINISHED.labels(event.outcome).inc()
    elif isinstance(event, SandboxReady):
        SANDBOX_READY.labels(event.mode).observe(event.ms_since_prompt / 1000)
    elif isinstance(event, ModelRequest) and event.step == 1:
        FIRST_MODEL_REQUEST.observe(event.ms_since_prompt / 1000)
