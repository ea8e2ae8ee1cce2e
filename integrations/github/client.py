"""One way to reach the GitHub API: a githubkit client with our retry policy and errors.

Every call goes through `call()`, which turns githubkit's exceptions into `errors.GitHubError`
subclasses whose messages say what was being done. Clients are synchronous: the control plane
calls GitHub from worker threads, and the forge wraps calls in `asyncio.to_thread`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from githubkit import GitHub
from githubkit.auth.base import BaseAuthStrategy
from githubkit.cache import BaseCacheStrategy
from githubkit.exception import (
    AuthCredentialError,
    AuthExpiredError,
    GitHubException,
    RateLimitExceeded,
    RequestError,
    RequestFailed,
    RequestTimeout,
)
from githubkit.response import Response
from githubkit.typing import RetryOption

from integrations.github.errors import (
    GitHubAuthError,
    GitHubError,
    GitHubForbidden,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubUnavailable,
    GitHubValidationFailed,
)

DEFAULT_API_URL = "https://api.github.com"


@dataclass(frozen=True)
class GitHubConfig:
    """Where GitHub is and how patiently we talk to it."""

    api_url: str = DEFAULT_API_URL
    """`https://api.github.com`, `https://HOST/api/v3` (Enterprise Server), or a test server."""
    timeout_s: float = 20.0
    server_retries: int = 2
    """Retries of a 5xx answer, after `retry_base_s`, then twice that, ..."""
    retry_base_s: float = 0.5
    max_rate_limit_wait_s: float = 30.0
    """A rate-limited call is retried once when GitHub asks to wait at most this long."""
    user_agent: str = "Nightshift"

    @property
    def web_url(self) -> str:
        """The browser-facing host: `https://github.com` for the public API, else the API's host."""
        url = httpx.URL(self.api_url)
        if url.host == "api.github.com":
            return "https://github.com"
        return str(url.copy_with(raw_path=b"/", query=None)).rstrip("/")

    @property
    def noreply_domain(self) -> str:
        host = httpx.URL(self.web_url).host
        return f"users.noreply.{host}"


class _Retry:
    """Retry decisions: 5xx a few times with a short backoff, a short rate-limit wait once."""

    def __init__(self, config: GitHubConfig) -> None:
        self.config = config

    def __call__(self, exc: GitHubException, retry_count: int) -> RetryOption:
        if isinstance(exc, RateLimitExceeded):
            wait = exc.retry_after.total_seconds()
            if retry_count < 1 and wait <= self.config.max_rate_limit_wait_s:
                return RetryOption(True, exc.retry_after)
            return RetryOption(False)
        if (
            isinstance(exc, RequestFailed)
            and exc.response.status_code >= 500
            and retry_count < self.config.server_retries
        ):
            return RetryOption(True, timedelta(seconds=self.config.retry_base_s * 2**retry_count))
        return RetryOption(False)


def make_client(
    config: GitHubConfig,
    auth: BaseAuthStrategy | str | None = None,
    cache: BaseCacheStrategy | None = None,
) -> GitHub[Any]:
    """A client acting as `auth`. `cache` holds the App's JWT; give each App key its own, so a
    replaced key is never answered from another key's cache."""
    return GitHub(
        auth,
        base_url=config.api_url,
        cache_strategy=cache,
        user_agent=config.user_agent,
        timeout=config.timeout_s,
        http_cache=False,
        auto_retry=_Retry(config),
    )


def _detail(response: Response[Any]) -> tuple[str, list[Any]]:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase, []
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("error_description") or data)
        errors = data.get("errors") if isinstance(data.get("errors"), list) else []
        details = "; ".join(
            str(e.get("message") or e.get("code")) if isinstance(e, dict) else str(e)
            for e in errors or []
        )
        return (f"{message} ({details})" if details else message), list(errors or [])
    return str(data)[:200], []


def translate(what: str, exc: Exception) -> GitHubError:
    """A GitHubError for a githubkit exception raised while doing `what`."""
    if isinstance(exc, GitHubError):
        return exc
    if isinstance(exc, RateLimitExceeded):
        wait = max(exc.retry_after.total_seconds(), 0.0)
        return GitHubRateLimited(
            f"{what}: GitHub's rate limit is exhausted; it resets in {wait:.0f}s", wait
        )
    if isinstance(exc, RequestFailed):
        status = exc.response.status_code
        message, errors = _detail(exc.response)
        if status == 401:
            return GitHubAuthError(f"{what}: GitHub refused the credentials ({message})")
        if status == 403:
            return GitHubForbidden(f"{what}: GitHub denied it ({message})")
        if status == 404:
            return GitHubNotFound(f"{what}: not found or not visible to these credentials")
        if status == 422:
            return GitHubValidationFailed(f"{what}: GitHub refused it ({message})", errors)
        if status >= 500:
            return GitHubUnavailable(f"{what}: GitHub answered {status} ({message}); try again")
        error = GitHubError(f"{what}: GitHub answered {status} ({message})")
        error.status_code = status
        return error
    if isinstance(exc, RequestTimeout):
        return GitHubUnavailable(f"{what}: GitHub did not answer in time")
    if isinstance(exc, RequestError):
        return GitHubUnavailable(f"{what}: could not reach GitHub ({exc.exc})")
    if isinstance(exc, AuthExpiredError):
        return GitHubAuthError(f"{what}: the credentials have expired ({exc})")
    if isinstance(exc, AuthCredentialError):
        return GitHubAuthError(f"{what}: {exc}")
    return GitHubError(f"{what}: {exc}")


def call(what: str, fn: Callable[[], Response[Any]]) -> Any:
    """Run one API call; its JSON body, or a GitHubError saying what failed."""
    try:
        response = fn()
    except (GitHubException, GitHubError) as exc:
        raise translate(what, exc) from exc
    if response.status_code == 204 or not response.content:
        return None
    return response.json()
