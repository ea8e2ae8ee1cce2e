"""Errors of the GitHub port; each message says what failed and what to do about it.

GitHubError
├── GitHubAuthError          401: bad, expired or revoked credentials (App key, user token)
├── GitHubForbidden          403 without a rate limit: the App or the person lacks a permission
├── GitHubRateLimited        403/429 with a rate limit; `retry_after` says when to come back
├── GitHubNotFound           404: no such repository / pull request, or no access to it
│   └── NotInstalled         the App is not installed on the repository
├── GitHubValidationFailed   422: GitHub refused the request's content (`errors` has details)
└── GitHubUnavailable        5xx, timeouts, connection failures: try again later
"""

from __future__ import annotations

from typing import Any

from integrations.errors import IntegrationsError


class GitHubError(IntegrationsError):
    status_code: int | None = None


class GitHubAuthError(GitHubError):
    status_code = 401


class GitHubForbidden(GitHubError):
    status_code = 403


class GitHubRateLimited(GitHubError):
    status_code = 403

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GitHubNotFound(GitHubError):
    status_code = 404


class NotInstalled(GitHubNotFound):
    pass


class GitHubValidationFailed(GitHubError):
    status_code = 422

    def __init__(self, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class GitHubUnavailable(GitHubError):
    pass
