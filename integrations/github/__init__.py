"""The GitHub port, over githubkit: the App (installation tokens), people (OAuth), pull
requests, webhook signatures, and the GitHub forge (host-side git with the App's token)."""

from integrations.github.app import GitHubApp, InstallationToken, RepoInfo, split_repo
from integrations.github.client import GitHubConfig
from integrations.github.errors import (
    GitHubAuthError,
    GitHubError,
    GitHubForbidden,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubUnavailable,
    GitHubValidationFailed,
    NotInstalled,
)
from integrations.github.forge import GitHubForge
from integrations.github.oauth import GitHubIdentity, OAuthClient, UserTokens
from integrations.github.pulls import PullRequestInfo
from integrations.github.webhooks import InvalidSignature, sign, verify_signature

__all__ = [
    "GitHubApp",
    "GitHubAuthError",
    "GitHubConfig",
    "GitHubError",
    "GitHubForbidden",
    "GitHubForge",
    "GitHubIdentity",
    "GitHubNotFound",
    "GitHubRateLimited",
    "GitHubUnavailable",
    "GitHubValidationFailed",
    "InstallationToken",
    "InvalidSignature",
    "NotInstalled",
    "OAuthClient",
    "PullRequestInfo",
    "RepoInfo",
    "UserTokens",
    "sign",
    "split_repo",
    "verify_signature",
]
