"""Liveness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlmodel import Session as DB

from app.api.deps import RuntimeDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(runtime: RuntimeDep) -> Health:
    with DB(runtime.engine) as db:
        db.exec(text("SELECT 1"))  # type: ignore[call-overload]
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
def metrics() -> Response:
    """Prometheus text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
