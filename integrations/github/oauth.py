"""People's GitHub identity: the OAuth web flow, token refresh, and who a token belongs to.

Tokens here are user-to-server tokens of the GitHub App (or of an OAuth App): pull requests are
opened with them so that GitHub shows the person who asked as their author.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from githubkit.auth._url import get_oauth_base_url
from githubkit.auth.oauth import exchange_web_flow_code, refresh_token
from githubkit.exception import GitHubException

from integrations.github.client import GitHubConfig, call, make_client, translate
from integrations.github.errors import (
    GitHubAuthError,
    GitHubError,
    GitHubForbidden,
    GitHubNotFound,
)

log = logging.getLogger("nightshift.github")


@dataclass(frozen=True)
class UserTokens:
    access_token: str
    expires_at: float | None
    """None for tokens that do not expire (token expiration turned off for the App)."""
    refresh_token: str | None
    refresh_expires_at: float | None
    scope: str = ""

    def expired(self, margin_s: float = 60.0, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at - margin_s


@dataclass(frozen=True)
class GitHubIdentity:
    id: int
    login: str
    name: str
    email: str
    """The address commits are made with: the primary verified one unless the person keeps
    it private, else GitHub's noreply address (`ID+login@users.noreply.github.com`)."""
    verified_emails: tuple[str, ...] = ()


def _tokens(what: str, data: dict[str, Any]) -> UserTokens:
    if "access_token" not in data:
        reason = data.get("error_description") or data.get("error") or "no access token returned"
        raise GitHubAuthError(f"{what}: GitHub refused ({reason})")
    now = time.time()
    expires_in = data.get("expires_in")
    refresh_in = data.get("refresh_token_expires_in")
    return UserTokens(
        access_token=str(data["access_token"]),
        expires_at=now + int(expires_in) if expires_in else None,
        refresh_token=str(data["refresh_token"]) if data.get("refresh_token") else None,
        refresh_expires_at=now + int(refresh_in) if refresh_in else None,
        scope=str(data.get("scope") or ""),
    )


class OAuthClient:
    """The OAuth web flow of the App's client id and secret."""

    def __init__(
        self,
        config: GitHubConfig,
        client_id: str,
        client_secret: str,
        *,
        on_token: Callable[[str], None] = lambda _token: None,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.client_secret = client_secret
        self.on_token = on_token
        """Called with every user token received (the runtime redacts it)."""

    @property
    def _oauth_base(self) -> httpx.URL:
        return get_oauth_base_url(httpx.URL(self.config.api_url.rstrip("/") + "/"))

    def authorize_url(self, state: str, redirect_uri: str) -> str:
        """Where to send the browser: GitHub asks the person to authorize, then redirects back."""
        query = urlencode(
            {"client_id": self.client_id, "redirect_uri": redirect_uri, "state": state}
        )
        return f"{str(self._oauth_base).rstrip('/')}/login/oauth/authorize?{query}"

    def _run(
        self, what: str, flow: Generator[httpx.Request, httpx.Response, dict[str, Any]]
    ) -> UserTokens:
        try:
            with httpx.Client(timeout=self.config.timeout_s) as http:
                request = next(flow)
                while True:
                    response = http.send(request)
                    try:
                        request = flow.send(response)
                    except StopIteration as stop:
                        data = stop.value
                        break
        except httpx.HTTPError as exc:
            raise GitHubError(f"{what}: could not reach GitHub ({exc})") from exc
        except GitHubException as exc:
            raise translate(what, exc) from exc
        tokens = _tokens(what, data)
        self.on_token(tokens.access_token)
        if tokens.refresh_token:
            self.on_token(tokens.refresh_token)
        return tokens

    def exchange_code(self, code: str, redirect_uri: str) -> UserTokens:
        """Trade the callback's `code` for the person's tokens."""
        gh = make_client(self.config)
        return self._run(
            "signing in with GitHub",
            exchange_web_flow_code(gh, self.client_id, self.client_secret, code, redirect_uri),
        )

    def refresh(self, token: str) -> UserTokens:
        """A new token pair; GitHub invalidates `token` once it has been used."""
        gh = make_client(self.config)
        return self._run(
            "refreshing a GitHub user token",
            refresh_token(gh, self.client_id, self.client_secret, token),
        )

    def identity(self, access_token: str) -> GitHubIdentity:
        """Who the token belongs to, with the email their commits should carry."""
        gh = make_client(self.config, access_token)
        user = call("reading the GitHub user", lambda: gh.rest.users.get_authenticated())
        login = str(user["login"])
        user_id = int(user["id"])
        emails: list[dict[str, Any]] = []
        try:
            emails = call(
                "reading the GitHub user's emails",
                lambda: gh.rest.users.list_emails_for_authenticated_user(per_page=100),
            )
        except (GitHubForbidden, GitHubNotFound):
            emails = []  # the App may lack the "email addresses" permission; noreply still works
        verified = tuple(str(e["email"]) for e in emails if e.get("verified"))
        primary = next(
            (e for e in emails if e.get("primary") and e.get("verified")),
            None,
        )
        if primary is not None and primary.get("visibility") != "private":
            email = str(primary["email"])
        else:
            email = f"{user_id}+{login}@{self.config.noreply_domain}"
        return GitHubIdentity(
            id=user_id,
            login=login,
            name=str(user.get("name") or login),
            email=email,
            verified_emails=verified,
        )

    def is_member(self, access_token: str, org: str) -> bool:
        """Whether the token's person is an active member of `org` (a pending invitation is
        not membership). GitHub answers 404 to non-members; 403 when the App is not installed
        in `org` or lacks its "Members: read" organization permission, which also means no."""
        gh = make_client(self.config, access_token)
        try:
            membership = call(
                f"reading the GitHub membership in {org}",
                lambda: gh.rest.orgs.get_membership_for_authenticated_user(org),
            )
        except GitHubNotFound:
            return False
        except GitHubForbidden as exc:
            log.warning(
                "%s; give the GitHub App the organization permission Members: read-only and "
                "install it in %s to allow sign-in by membership",
                exc,
                org,
            )
            return False
        return isinstance(membership, dict) and membership.get("state") == "active"
