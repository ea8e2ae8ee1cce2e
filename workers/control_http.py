"""The control-plane port over HTTP, for workers on other processes or hosts.

Remote workers never open a session file: they call the API's internal routes
(`app/api/routes/internal.py`) with the shared worker token. Calls that are safe to repeat are
retried through an API restart (connection errors, 502/503/504) for up to `retry_for`
seconds; creating a child session is retried only when the request never reached the API.

Lease renewals are gathered: the runners of a worker process heartbeat on one tick
(`workers/runner.py`), and the renewals that arrive within `RENEW_GATHER_S` of each other go
as one request (`POST /internal/v1/leases/renew`), which the API writes in one statement,
instead of a request and a transaction each. A renewal the API cannot answer there (its
session is owned by another API process) is sent again on the session's own route, which
reaches the owner; an API without the batch route is asked one session at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, Field, TypeAdapter

from images.spec import RepoSpec
from workers.control import (
    MAX_ARTIFACT_BYTES,
    ArtifactStored,
    LeaseState,
    PromptJob,
    RunStart,
    SessionContext,
    SessionSummary,
)
from workers.errors import ControlPlaneError, ControlPlaneUnavailable
from workers.events import Author, Event

log = logging.getLogger("nightshift.control")
T = TypeVar("T")

PREFIX = "/internal/v1"
SERVER_KEEP_ALIVE_S = 5
"""How long `nightshift serve` keeps an idle connection open (uvicorn's `timeout_keep_alive`)."""
CLIENT_KEEP_ALIVE_S = 2.0
"""How long our clients of the API reuse an idle connection: well under the server's. The
server's timer starts when it sent an answer, the client's when it read it, so with equal
timeouts a request can go out on a connection the server is closing that moment: it fails
with a read error, and a request that is not idempotent (spawning a session) cannot be sent
again."""
TOKEN_HEADER = "X-Nightshift-Worker-Token"  # noqa: S105 (a header name)
RENEW_GATHER_S = 0.05
"""How long the first renewal of a batch waits for others (heartbeats of one tick)."""
MAX_RENEWALS = 1000
"""Renewals in one batch request, at most."""


# ---------------------------------------------------------------- wire shapes (shared with app/)


class LeaseRequest(BaseModel):
    runner_id: str
    ttl_s: float = 30.0


class LeaseAcquired(BaseModel):
    acquired: bool


class LeaseRenewed(BaseModel):
    state: LeaseState


class LeaseRenewal(BaseModel):
    session_id: str = Field(min_length=1, max_length=64)
    runner_id: str = Field(min_length=1, max_length=256)
    ttl_s: float = Field(default=30.0, gt=0, le=86_400)


class LeaseRenewals(BaseModel):
    leases: list[LeaseRenewal] = Field(min_length=1, max_length=MAX_RENEWALS)


class LeasesRenewed(BaseModel):
    states: list[LeaseState | None]
    """One per renewal asked, in order; None: its session is owned by another API process,
    so this one cannot answer (ask the session's own route, which reaches the owner)."""


class LeaseReleased(BaseModel):
    more: bool
    """Prompts are still queued: the caller may go on draining."""


class RunnerRequest(BaseModel):
    runner_id: str


class SpawnRequest(BaseModel):
    repo: str | None = None
    prompt: str
    author: Author
    model: str | None = None


class Spawned(BaseModel):
    id: str


class JobDone(BaseModel):
    summary: str


_RETRY_STATUS = {502, 503, 504}
_ABSENT = object()
_Renewal = tuple[str, str, float]
"""(session id, runner id, ttl)"""
_PROMPT = TypeAdapter(PromptJob | None)
_SPECS = TypeAdapter(list[RepoSpec])
_EVENTS: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


class HttpControlPlane:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry_for: float = 60.0,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_for = retry_for
        self._client = httpx.AsyncClient(
            base_url=self.base_url + PREFIX,
            headers={TOKEN_HEADER: token, "User-Agent": "nightshift-worker"},
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(
                max_connections=200,
                max_keepalive_connections=50,
                keepalive_expiry=CLIENT_KEEP_ALIVE_S,
            ),
        )
        self._renewals: dict[_Renewal, list[asyncio.Future[LeaseState]]] | None = None
        self._renewing: set[asyncio.Task[None]] = set()
        self._batch_route = True
        """False once the API answered that it has no batch route (an older version)."""

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | None = None,
        *,
        idempotent: bool = True,
        absent: object = None,
    ) -> Any:
        """The answer's JSON; with `absent`, that value when the API has no such route."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            try:
                response = await self._client.request(
                    method, path, json=body.model_dump(mode="json") if body else None
                )
            except httpx.TransportError as exc:
                if not (idempotent or isinstance(exc, httpx.ConnectError)):
                    raise ControlPlaneError(f"the control plane did not answer: {exc}") from exc
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response.json()
                if absent is not None and response.status_code in (404, 405):
                    return absent
                detail = _detail(response)
                if response.status_code not in _RETRY_STATUS or not idempotent:
                    raise ControlPlaneError(detail)
                problem = f"{response.status_code}: {detail}"
            if time.monotonic() > deadline:
                raise ControlPlaneUnavailable(
                    f"the control plane at {self.base_url} is unavailable ({problem})"
                )
            log.warning("control plane %s %s: %s; retrying in %.1fs", method, path, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------ ControlPlane

    async def acquire_lease(self, session_id: str, runner_id: str, ttl_s: float) -> bool:
        data = await self._call(
            "POST", f"/sessions/{session_id}/lease", LeaseRequest(runner_id=runner_id, ttl_s=ttl_s)
        )
        return LeaseAcquired.model_validate(data).acquired

    async def start_run(self, session_id: str, runner_id: str, ttl_s: float) -> RunStart:
        data = await self._call(
            "POST", f"/sessions/{session_id}/start", LeaseRequest(runner_id=runner_id, ttl_s=ttl_s)
        )
        return RunStart.model_validate(data)

    async def renew_lease(self, session_id: str, runner_id: str, ttl_s: float) -> LeaseState:
        """Gathered with the other renewals of the next `RENEW_GATHER_S` into one request."""
        loop = asyncio.get_running_loop()
        if self._renewals is None:
            self._renewals = {}
            loop.call_later(RENEW_GATHER_S, self._start_renewals)
        answer: asyncio.Future[LeaseState] = loop.create_future()
        self._renewals.setdefault((session_id, runner_id, ttl_s), []).append(answer)
        return await answer

    def _start_renewals(self) -> None:
        batch, self._renewals = self._renewals or {}, None
        task = asyncio.get_running_loop().create_task(self._renew(batch))
        self._renewing.add(task)
        task.add_done_callback(self._renewing.discard)

    async def _renew(self, batch: dict[_Renewal, list[asyncio.Future[LeaseState]]]) -> None:
        keys = list(batch)
        answers: list[LeaseState | BaseException]
        try:
            answers = await self._renew_many(keys)
        except Exception as exc:  # each runner hears it, as from its own call
            answers = [exc] * len(keys)
        for key, answer in zip(keys, answers, strict=True):
            for waiter in batch[key]:
                if waiter.done():  # its heartbeat was cancelled meanwhile
                    continue
                if isinstance(answer, BaseException):
                    waiter.set_exception(answer)
                else:
                    waiter.set_result(answer)

    async def _renew_many(self, keys: list[_Renewal]) -> list[LeaseState | BaseException]:
        answers: list[LeaseState | BaseException | None] = [None] * len(keys)
        if self._batch_route:
            for start in range(0, len(keys), MAX_RENEWALS):
                chunk = keys[start : start + MAX_RENEWALS]
                body = LeaseRenewals(
                    leases=[LeaseRenewal(session_id=s, runner_id=r, ttl_s=t) for s, r, t in chunk]
                )
                data = await self._call("POST", "/leases/renew", body, absent=_ABSENT)
                if data is _ABSENT:
                    self._batch_route = False
                    break
                states = LeasesRenewed.model_validate(data).states
                if len(states) != len(chunk):
                    raise ControlPlaneError("the control plane answered a renewal batch wrongly")
                answers[start : start + len(chunk)] = states
        # Not answered in a batch: owned by another API process, or an API without the route.
        missing = [n for n, answer in enumerate(answers) if answer is None]
        singles = await asyncio.gather(
            *(self._renew_one(*keys[n]) for n in missing), return_exceptions=True
        )
        for n, answer in zip(missing, singles, strict=True):
            answers[n] = answer
        return [answer if answer is not None else "lost" for answer in answers]

    async def _renew_one(self, session_id: str, runner_id: str, ttl_s: float) -> LeaseState:
        data = await self._call(
            "POST",
            f"/sessions/{session_id}/lease/renew",
            LeaseRequest(runner_id=runner_id, ttl_s=ttl_s),
        )
        return LeaseRenewed.model_validate(data).state

    async def release_lease(self, session_id: str, runner_id: str) -> bool:
        data = await self._call(
            "POST", f"/sessions/{session_id}/lease/release", RunnerRequest(runner_id=runner_id)
        )
        return LeaseReleased.model_validate(data).more

    async def next_prompt(self, session_id: str, runner_id: str) -> PromptJob | None:
        # Safe to repeat: the API hands a runner the prompt it already claimed.
        data = await self._call(
            "POST", f"/sessions/{session_id}/next-prompt", RunnerRequest(runner_id=runner_id)
        )
        return _PROMPT.validate_python(data)

    async def session_context(self, session_id: str) -> SessionContext:
        return SessionContext.model_validate(
            await self._call("GET", f"/sessions/{session_id}/context")
        )

    async def stored_events(
        self, session_id: str, types: list[str], prompt_id: int | None = None
    ) -> list[Event]:
        query = urlencode(
            {"types": ",".join(types), **({} if prompt_id is None else {"prompt_id": prompt_id})}
        )
        data = await self._call("GET", f"/sessions/{session_id}/stored-events?{query}")
        return _EVENTS.validate_python(data)

    async def spawn_session(
        self,
        parent_id: str,
        repo: str | None,
        prompt: str,
        author: Author,
        model: str | None = None,
    ) -> str:
        data = await self._call(
            "POST",
            f"/sessions/{parent_id}/children",
            SpawnRequest(repo=repo, prompt=prompt, author=author, model=model),
            idempotent=False,
        )
        return Spawned.model_validate(data).id

    async def session_status(self, session_id: str) -> SessionSummary:
        return SessionSummary.model_validate(
            await self._call("GET", f"/sessions/{session_id}/summary")
        )

    async def store_artifact(self, session_id: str, data: bytes) -> ArtifactStored:
        if len(data) > MAX_ARTIFACT_BYTES:
            raise ControlPlaneError(f"an artifact may hold at most {MAX_ARTIFACT_BYTES} bytes")
        try:  # content-addressed: storing the same bytes twice is harmless, so one retry is too
            response = await self._client.post(
                f"/sessions/{session_id}/artifacts",
                content=data,
                headers={"Content-Type": "image/png"},
            )
        except httpx.TransportError as exc:
            raise ControlPlaneError(f"the control plane did not answer: {exc}") from exc
        if response.status_code >= 400:
            raise ControlPlaneError(_detail(response))
        return ArtifactStored.model_validate(response.json())

    async def repo_specs(self) -> list[RepoSpec]:
        return _SPECS.validate_python(await self._call("GET", "/repos"))

    async def run_job(self, name: str) -> str:
        data = await self._call("POST", f"/jobs/{name}", idempotent=False)
        return JobDone.model_validate(data).summary


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail or response.text[:300] or f"HTTP {response.status_code}")
