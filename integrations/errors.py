"""Errors the outside-service ports raise; every one of them is an `IntegrationsError`.

IntegrationsError
├── ForgeError                    a git host refused or failed an operation
│   ├── MergeConflict             the branch does not merge cleanly (`files`: the conflicts)
│   └── BaseCheckedOut            the base is checked out in a work tree a merge could disturb
├── ModelError                    a model provider refused or failed a turn
│   ├── ModelNotConfigured        no model or credentials: says exactly what to set
│   ├── ModelTransientError       429 / 5xx / connection trouble: retry after `retry_after`
│   └── ModelFatalError           anything retrying will not fix (401, 400, ...)
│       └── ModelContextOverflow  the conversation no longer fits the model's window
├── GitHubError                   the GitHub API refused or failed
│   ├── GitHubAuthError           401: bad, expired or revoked credentials
│   ├── GitHubForbidden           403 without a rate limit: a permission is missing
│   ├── GitHubRateLimited         403/429 with a rate limit; `retry_after` says when
│   ├── GitHubNotFound            404: no such repository / pull request, or no access
│   │   └── NotInstalled          the App is not installed on the repository
│   ├── GitHubValidationFailed    422: GitHub refused the request's content
│   └── GitHubUnavailable         5xx, timeouts, connection failures: try again later
└── InvalidSignature              a webhook delivery not signed by GitHub with our secret

Each port defines its branch beside its interface: ForgeError in `forge/base.py` (MergeConflict
and BaseCheckedOut in `forge/local.py`), ModelError's branch in `llm/base.py`, GitHubError's in
`github/errors.py`, InvalidSignature in `github/webhooks.py`. This module holds the root only,
so every port can import it without a circle.
"""

from __future__ import annotations


class IntegrationsError(Exception):
    """The root of every error the integrations layer defines."""
