"""Liveness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlmodel import Session as DB

from app.api.deps import RuntimeDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(runtime: RuntimeDep) -> Health:
    with DB(runtime.engine) as db:
        db.execute(text("SELECT 1"))
    settings = runtime.settings
    from importlib.metadata import version

    return Health(
        status="ok",
        version=version("nightshift"),
        mode="distributed" if settings.broker_url else "embedded",
        sandbox=runtime.backend.runtime_version(),
        database=runtime.engine.dialect.name,
        event_bus=None
        if runtime.streams is None
        else ("ok" if runtime.streams.healthy else "unavailable"),
    )


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text format. `nightshift_event_loop_lag_max_seconds` is the worst lag of the
    API's event loop since the previous read."""
    loop_lag = getattr(request.app.state, "loop_lag", None)
    if loop_lag is not None:
        loop_lag.scraped()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
