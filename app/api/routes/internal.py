"""Internal routes: the control-plane port (`workers/control.py`) for remote workers.

Not part of the public API and left out of the OpenAPI docs. Every call needs the shared
worker token (`NIGHTSHIFT_WORKER_TOKEN`) in the `X-Nightshift-Worker-Token` header; without a
configured token the routes refuse every call.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request

from app.api.deps import ControlJobsDep, ReposDep, RunnersDep, SessionsDep, SettingsDep
from app.services.artifacts import Artifacts
from app.services.repo_catalog import spec_of
from app.settings import reveal
from images.spec import RepoSpec
from workers.control import (
    MAX_ARTIFACT_BYTES,
    ArtifactStored,
    PromptJob,
    RunStart,
    SessionContext,
    SessionSummary,
)
from workers.control_http import (
    PREFIX,
    JobDone,
    LeaseAcquired,
    LeaseReleased,
    LeaseRenewals,
    LeaseRenewed,
    LeaseRequest,
    LeasesRenewed,
    RunnerRequest,
    Spawned,
    SpawnRequest,
)
from workers.events import Event


async def require_worker(
    settings: SettingsDep,
    token: Annotated[str | None, Header(alias="X-Nightshift-Worker-Token")] = None,
) -> None:
    expected = reveal(settings.worker_token)
    if not expected:
        raise HTTPException(
            403, "the worker API is disabled: set NIGHTSHIFT_WORKER_TOKEN on the API server"
        )
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(401, "a valid X-Nightshift-Worker-Token header is required")


router = APIRouter(
    prefix=PREFIX,
    tags=["internal"],
    include_in_schema=False,
    dependencies=[Depends(require_worker)],
)


@router.post("/sessions/{session_id}/lease")
def acquire_lease(
    session_id: str, body: LeaseRequest, sessions: SessionsDep, runners: RunnersDep
) -> LeaseAcquired:
    acquired = runners.acquire_lease(session_id, body.runner_id, body.ttl_s)
    if not acquired:
        sessions.check(session_id)  # an unknown session is a 404, not a lease held elsewhere
    return LeaseAcquired(acquired=acquired)


@router.post("/sessions/{session_id}/start")
def start_run(
    session_id: str, body: LeaseRequest, sessions: SessionsDep, runners: RunnersDep
) -> RunStart:
    """The lease, the first prompt and its context in one request (`ControlPlane.start_run`).
    Safe to repeat: a runner that holds the lease gets it again, with the prompt it claimed."""
    start = runners.start_run(session_id, body.runner_id, body.ttl_s)
    if not start.leased:
        sessions.check(session_id)  # an unknown session is a 404, not a lease held elsewhere
    return start


@router.post("/sessions/{session_id}/lease/renew")
def renew_lease(session_id: str, body: LeaseRequest, runners: RunnersDep) -> LeaseRenewed:
    return LeaseRenewed(state=runners.renew_lease(session_id, body.runner_id, body.ttl_s))


@router.post("/leases/renew")
def renew_leases(body: LeaseRenewals, runners: RunnersDep) -> LeasesRenewed:
    """The heartbeats of a worker process's runners, in one request and one statement. A
    session another API process owns is not answered here (None): the worker renews it on
    the session's own route, which reaches the owner."""
    owners = runners.owners
    batch = {
        (lease.session_id, lease.runner_id): lease.ttl_s
        for lease in body.leases
        if owners is None or owners.holds(lease.session_id)
    }
    answers = runners.renew_leases(batch) if batch else {}
    return LeasesRenewed(
        states=[answers.get((lease.session_id, lease.runner_id)) for lease in body.leases]
    )


@router.post("/sessions/{session_id}/lease/release")
def release_lease(session_id: str, body: RunnerRequest, runners: RunnersDep) -> LeaseReleased:
    return LeaseReleased(more=runners.release_lease(session_id, body.runner_id))


@router.post("/sessions/{session_id}/next-prompt")
def next_prompt(session_id: str, body: RunnerRequest, runners: RunnersDep) -> PromptJob | None:
    return runners.next_prompt(session_id, body.runner_id)


@router.get("/sessions/{session_id}/context")
def session_context(session_id: str, runners: RunnersDep) -> SessionContext:
    return runners.context(session_id)


@router.get("/sessions/{session_id}/stored-events")
def stored_events(
    session_id: str,
    sessions: SessionsDep,
    runners: RunnersDep,
    types: Annotated[str, Query(min_length=1)],
    prompt_id: int | None = None,
) -> list[Event]:
    sessions.check(session_id)
    return runners.stored_events(session_id, types.split(","), prompt_id)


@router.get("/sessions/{session_id}/summary")
def session_summary(session_id: str, runners: RunnersDep) -> SessionSummary:
    return runners.summary(session_id)


@router.post("/sessions/{session_id}/children")
def spawn_session(session_id: str, body: SpawnRequest, runners: RunnersDep) -> Spawned:
    return Spawned(id=runners.spawn(session_id, body.repo, body.prompt, body.author, body.model))


@router.post("/sessions/{session_id}/artifacts")
async def store_artifact(
    session_id: str, request: Request, sessions: SessionsDep, settings: SettingsDep
) -> ArtifactStored:
    """A PNG the session's agent made; read with a cap, so an oversized body is cut off."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_ARTIFACT_BYTES:
            raise HTTPException(413, f"an artifact may hold at most {MAX_ARTIFACT_BYTES} bytes")
    await asyncio.to_thread(sessions.check, session_id)
    return await asyncio.to_thread(Artifacts.of(settings.data_dir).store, session_id, bytes(data))


@router.get("/repos")
def repo_specs(repos: ReposDep) -> list[RepoSpec]:
    return [spec_of(r) for r in repos.list()]


@router.post("/jobs/{name}")
def run_job(name: str, control_jobs: ControlJobsDep) -> JobDone:
    return JobDone(summary=control_jobs.run(name))
