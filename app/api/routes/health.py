"""Liveness and metrics."""

from __future__ import annotations

from functools import cache
from importlib.metadata import version

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import (
    BackendDep,
    EngineDep,
    EventStreamsDep,
    LoopLagDep,
    PeersDep,
    SettingsDep,
)
from app.db import reader
from app.schemas import Health

router = APIRouter(tags=["health"])


@cache
def _version() -> str:
    """The installed version, read once: reading package metadata parses a file each time,
    and load balancers ask for /healthz every few seconds."""
    return version("nightshift")


@router.get("/healthz")
def healthz(
    engine: EngineDep,
    settings: SettingsDep,
    backend: BackendDep,
    streams: EventStreamsDep,
    peers: PeersDep,
) -> Health:
    # The read-only companion: a health check never queues behind a write (SQLite's lock).
    with reader(engine).connect() as conn:
        conn.execute(text("SELECT 1"))
    return Health(
        status="ok",
        version=_version(),
        mode="distributed" if settings.broker_url else "embedded",
        sandbox=backend.runtime_version(),
        database=engine.dialect.name,
        event_bus=None if streams is None else ("ok" if streams.healthy else "unavailable"),
        peer_url=peers.owners.peer_url if peers is not None else None,
        sessions_owned=len(peers.owners.held()) if peers is not None else None,
    )


@router.get("/metrics", response_class=Response)
def metrics(loop_lag: LoopLagDep) -> Response:
    """Prometheus text format. `nightshift_event_loop_lag_max_seconds` is the worst lag of the
    API's event loop since the previous read."""
    if loop_lag is not None:
        loop_lag.scraped()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
