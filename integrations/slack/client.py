"""The Slack Web API client: slack_sdk's `AsyncWebClient` with its retry handlers.

A 429 waits for the `Retry-After` Slack sent (slack_sdk's rate-limit handler), a 500/503 and a
dropped connection back off and retry. The base URL is configurable so tests can point the
real client at a fake server.
"""

from __future__ import annotations

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

DEFAULT_API_URL = "https://slack.com/api/"


def web_client(
    token: str, base_url: str = DEFAULT_API_URL, *, retries: int = 3, timeout: int = 30
) -> AsyncWebClient:
    """A Web API client that honours `Retry-After` on 429 and retries transient failures."""
    return AsyncWebClient(
        token=token,
        base_url=base_url,
        timeout=timeout,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=retries),
            AsyncServerErrorRetryHandler(max_retry_count=retries),
            AsyncConnectionErrorRetryHandler(max_retry_count=retries),
        ],
    )


def error_code(exc: SlackApiError) -> str:
    """Slack's error code (`channel_not_found`, `not_in_channel`, ...) from a failed call."""
    data = getattr(exc.response, "data", None)
    if isinstance(data, dict):
        return str(data.get("error") or "unknown_error")
    return "unknown_error"


__all__ = ["AsyncWebClient", "SlackApiError", "error_code", "web_client"]
