"""GitHub webhooks: verified, recorded, answered at once, processed in the background."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from app.api.deps import GitHubDep
from app.services.github.events import BadDelivery
from integrations.github import InvalidSignature

router = APIRouter(tags=["github"])


@router.post(
    "/github/webhooks",
    status_code=202,
    responses={
        200: {"description": "A redelivery of a delivery already received: nothing to do"},
        401: {"description": "Missing, non-SHA-256 or wrong X-Hub-Signature-256"},
    },
)
async def github_webhook(request: Request, github: GitHubDep) -> JSONResponse:
    """Receive a GitHub App webhook delivery (pull_request, push, installation, ...)."""
    if github is None:
        raise HTTPException(404, "the GitHub App is not configured on this server")
    if not github.webhooks.secret:
        raise HTTPException(503, "GITHUB_WEBHOOK_SECRET is not set; deliveries cannot be verified")
    body = await request.body()
    try:
        received = await asyncio.to_thread(github.webhooks.receive, body, request.headers)
    except InvalidSignature as exc:
        raise HTTPException(401, f"webhook refused: {exc}") from exc
    except BadDelivery as exc:
        raise HTTPException(400, str(exc)) from exc
    return JSONResponse(
        {"delivery": received.delivery, "event": received.event, "outcome": received.outcome},
        status_code=202 if received.outcome == "queued" else 200,
    )
