"""The GitHub App identity: installation lookup and short-lived installation tokens.

The App only clones and pushes (and, when configured as a fallback, opens pull requests). Its
tokens are minted per repository (scoped to that one repository), cached until shortly before
they expire, and handed to host-side git only: none is ever written to disk or into a sandbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy

from integrations.github.client import GitHubConfig, call, make_client
from integrations.github.errors import GitHubError, GitHubNotFound, NotInstalled

TOKEN_MARGIN_S = 300.0
"""Stop using an installation token this long before GitHub expires it (they live 1 hour)."""
LOOKUP_TTL_S = 600.0


def split_repo(full_name: str) -> tuple[str, str]:
    """`owner/name` → (owner, name); GitHubError when it is not that shape."""
    owner, _, name = full_name.strip().partition("/")
    if not owner or not name or "/" in name:
        raise GitHubError(f"{full_name!r} is not a GitHub repository name (owner/name)")
    return owner, name


def check_private_key(pem: str) -> str:
    """The PEM text of an RSA private key, or ValueError saying what is wrong with it."""
    text = pem.strip().replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            "the GitHub App private key is not a PEM private key (download one from the App's "
            f"settings page, 'Private keys'): {exc}"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the GitHub App private key must be an RSA key (GitHub signs RS256)")
    return text + "\n"


@dataclass(frozen=True)
class InstallationToken:
    token: str
    expires_at: float
    installation_id: int
    repo: str

    def usable(self, margin_s: float, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at - margin_s


@dataclass(frozen=True)
class RepoInfo:
    full_name: str
    clone_url: str
    default_branch: str
    private: bool


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class GitHubApp:
    """Acts as the App: finds a repository's installation and mints tokens for it."""

    def __init__(
        self,
        config: GitHubConfig,
        app_id: int | str,
        private_key: str,
        *,
        on_token: Callable[[str], None] = lambda _token: None,
        margin_s: float = TOKEN_MARGIN_S,
    ) -> None:
        self.config = config
        self.app_id = app_id
        self._strategy = AppAuthStrategy(app_id, check_private_key(private_key))
        self._jwt_cache = MemCacheStrategy()
        self.on_token = on_token
        """Called with every token minted, before it is used (the runtime redacts it)."""
        self.margin_s = margin_s
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._tokens: dict[str, InstallationToken] = {}
        self._installations: dict[str, tuple[int, float]] = {}
        self._repos: dict[str, tuple[RepoInfo, float]] = {}
        self._slug: str | None = None
        self.minted = 0

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def as_app(self) -> GitHub[Any]:
        return make_client(self.config, self._strategy, self._jwt_cache)

    def slug(self) -> str:
        """The App's slug (its `@name` on GitHub), read once from `GET /app`."""
        if self._slug is None:
            gh = self.as_app()
            data = call("reading the App's own settings", lambda: gh.rest.apps.get_authenticated())
            slug = str((data or {}).get("slug") or "").strip()
            if not slug:
                raise GitHubError("GitHub did not say the App's slug (GET /app)")
            self._slug = slug
        return self._slug

    # ------------------------------------------------------------ installations

    def installation_id(self, repo: str) -> int:
        """The id of the App's installation on `repo` (NotInstalled when there is none)."""
        key = repo.lower()
        cached = self._installations.get(key)
        if cached is not None and time.time() - cached[1] < LOOKUP_TTL_S:
            return cached[0]
        owner, name = split_repo(repo)
        gh = self.as_app()
        try:
            data = call(
                f"looking up the App installation on {repo}",
                lambda: gh.rest.apps.get_repo_installation(owner, name),
            )
        except GitHubNotFound as exc:
            raise NotInstalled(
                f"the GitHub App is not installed on {repo} (or cannot see it): install it on "
                f"that repository from the App's page on {self.config.web_url}, then retry"
            ) from exc
        installation = int(data["id"])
        self._installations[key] = (installation, time.time())
        return installation

    def forget(self, repo: str | None = None, installation_id: int | None = None) -> None:
        """Drop cached lookups and tokens (an installation was removed or changed)."""
        with self._guard:
            for key in list(self._tokens):
                token = self._tokens[key]
                if (repo and key == repo.lower()) or token.installation_id == installation_id:
                    del self._tokens[key]
            for key in list(self._installations):
                if (repo and key == repo.lower()) or self._installations[key][0] == installation_id:
                    del self._installations[key]
            if repo:
                self._repos.pop(repo.lower(), None)
            elif installation_id is not None:
                self._repos.clear()

    # ------------------------------------------------------------ tokens

    def token(self, repo: str) -> InstallationToken:
        """A token for `repo` alone, valid for at least the margin; minted when needed."""
        key = repo.lower()
        with self._lock(key):
            cached = self._tokens.get(key)
            if cached is not None and cached.usable(self.margin_s):
                return cached
            try:
                token = self._mint(repo)
            except GitHubNotFound:
                # The installation may have been replaced: look it up afresh, once.
                self.forget(repo)
                token = self._mint(repo)
            self._tokens[key] = token
            return token

    def _mint(self, repo: str) -> InstallationToken:
        installation = self.installation_id(repo)
        _, name = split_repo(repo)
        gh = self.as_app()
        data = call(
            f"minting an installation token for {repo}",
            lambda: gh.rest.apps.create_installation_access_token(
                installation, repositories=[name]
            ),
        )
        token = InstallationToken(
            token=str(data["token"]),
            expires_at=_timestamp(str(data["expires_at"])),
            installation_id=installation,
            repo=repo,
        )
        self.on_token(token.token)
        self.minted += 1
        return token

    def invalidate(self, token: InstallationToken) -> None:
        """GitHub refused this token (revoked early): the next call mints a new one."""
        with self._guard:
            if self._tokens.get(token.repo.lower()) == token:
                del self._tokens[token.repo.lower()]

    def as_installation(self, repo: str) -> GitHub[Any]:
        """A client acting as the App's installation on `repo`, with a current token."""
        return make_client(self.config, self.token(repo).token)

    # ------------------------------------------------------------ repositories

    def repo_info(self, repo: str) -> RepoInfo:
        key = repo.lower()
        cached = self._repos.get(key)
        if cached is not None and time.time() - cached[1] < LOOKUP_TTL_S:
            return cached[0]
        owner, name = split_repo(repo)
        gh = self.as_installation(repo)
        data = call(f"reading repository {repo}", lambda: gh.rest.repos.get(owner, name))
        info = RepoInfo(
            full_name=str(data["full_name"]),
            clone_url=str(data["clone_url"]),
            default_branch=str(data.get("default_branch") or "main"),
            private=bool(data.get("private", True)),
        )
        self._repos[key] = (info, time.time())
        return info
