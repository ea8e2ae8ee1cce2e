"""A fake GitHub: the REST API Nightshift uses (FastAPI on 127.0.0.1) and a real
`git http-backend` behind a small HTTP server that lets git through only with a current
installation token of the App.

Driven by the real githubkit client through `GITHUB_API_URL`. Tokens look like GitHub's
(`ghs_`, `ghu_`, `ghr_`); installation JWTs are checked (RS256) against the App's public key.
Switches inject 401, 403 (rate limited) and 5xx answers. Every API request is recorded with the
token that made it, so tests can tell who opened a pull request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from integrations.github.webhooks import sign
from tests.factories import git, make_repo
from tests.fakes.server import BackgroundServer

_ALNUM = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Issued:
    token: str
    kind: str  # installation | user | refresh
    expires_at: float | None
    installation_id: int | None = None
    repos: list[str] | None = None
    login: str | None = None
    revoked: bool = False

    def valid(self, now: float | None = None) -> bool:
        return not self.revoked and (
            self.expires_at is None or (now or time.time()) < self.expires_at
        )


@dataclass
class FakeUser:
    id: int
    login: str
    name: str | None
    emails: list[dict[str, Any]]
    orgs: dict[str, str] = field(default_factory=dict)
    """Organization login → membership state (`active`, or `pending` for an invitation)."""


@dataclass
class FakeRepo:
    full_name: str
    id: int
    installation_id: int | None
    path: Path
    default_branch: str = "main"


@dataclass
class FakePull:
    number: int
    repo: str
    title: str
    body: str
    head: str
    base: str
    head_sha: str
    author: str
    token: str
    state: str = "open"
    merged: bool = False
    draft: bool = False
    created_at: float = field(default_factory=time.time)
    merge_commit_sha: str | None = None


@dataclass
class Failure:
    status: int
    match: str
    reset_s: int = 3600


@dataclass
class Recorded:
    method: str
    path: str
    token: str | None
    body: Any = None


class FakeGitHub:
    """State of the fake and the FastAPI app serving it."""

    def __init__(self, root: Path, app_key_pem: str, public_pem: str) -> None:
        self.root = root
        self.git_root = root / "git"
        self.git_root.mkdir(parents=True, exist_ok=True)
        self.app_id = 4242
        self.app_slug = "nightshift-test"
        self.private_key = app_key_pem
        self.public_key = public_pem
        self.client_id = "Iv1.fakeclient0001"
        self.client_secret = "fake-client-secret-" + _random(20)
        self.lock = threading.RLock()
        self.users: dict[str, FakeUser] = {}
        self.authorizing: str | None = None
        """The login that approves at /login/oauth/authorize (the person at the browser)."""
        self.codes: dict[str, str] = {}
        self.tokens: dict[str, Issued] = {}
        self.repos: dict[str, FakeRepo] = {}
        self.installations: dict[int, dict[str, Any]] = {}
        self.pulls: list[FakePull] = []
        self.comments: list[dict[str, Any]] = []
        self.permissions: dict[tuple[str, str], str] = {}
        """(repo, login), lower case → `admin`/`write`/`read`/`none`; `read` when unset."""
        self.reactions: list[dict[str, Any]] = []
        self.review_comments: dict[int, list[dict[str, Any]]] = {}
        """Review id → the line comments of that review."""
        self.job_logs: dict[int, str] = {}
        """Actions job id (= its check run id) → the job's log."""
        self.run_jobs: dict[int, list[dict[str, Any]]] = {}
        """Workflow run id → its jobs."""
        self.suite_runs: dict[int, list[dict[str, Any]]] = {}
        """Check suite id → its check runs."""
        self.requests: list[Recorded] = []
        self.git_requests: list[tuple[str, str, str | None]] = []
        """(repo, service, token) of every git request, allowed or not."""
        self.failures: list[Failure] = []
        self.refreshes = 0
        self.refresh_delay = 0.0
        """Seconds a refresh grant takes after the old refresh token was spent."""
        self.installation_token_ttl = 3600
        self.user_token_ttl = 8 * 3600
        self.token_style = "classic"
        self.emails_forbidden = False
        self.blocked_orgs: set[str] = set()
        """Organizations that answer 403 to the App (not installed, or no Members permission)."""
        self.git_url = ""
        self.api_url = ""

    # ------------------------------------------------------------ setup helpers

    def add_installation(self, installation_id: int, account: str) -> None:
        with self.lock:
            self.installations[installation_id] = {"account": account, "repos": []}

    def add_repo(
        self, full_name: str, installation_id: int | None = 1, files: dict[str, str] | None = None
    ) -> FakeRepo:
        owner, name = full_name.split("/")
        with self.lock:
            if installation_id is not None and installation_id not in self.installations:
                self.add_installation(installation_id, owner)
            work_root = self.root / "work" / owner
            work_root.mkdir(parents=True, exist_ok=True)
            bare = make_repo(work_root, name, files, bare=True)
            target = self.git_root / owner / f"{name}.git"
            target.parent.mkdir(parents=True, exist_ok=True)
            bare.rename(target)
            repo = FakeRepo(full_name, 1000 + len(self.repos), installation_id, target)
            self.repos[full_name.lower()] = repo
            if installation_id is not None:
                self.installations[installation_id]["repos"].append(full_name)
            return repo

    def add_user(
        self,
        login: str,
        name: str | None,
        email: str | None,
        *,
        user_id: int | None = None,
        private_email: bool = False,
        orgs: dict[str, str] | None = None,
    ) -> FakeUser:
        emails = []
        if email:
            emails.append(
                {
                    "email": email,
                    "primary": True,
                    "verified": True,
                    "visibility": "private" if private_email else "public",
                }
            )
        user = FakeUser(user_id or 500 + len(self.users), login, name, emails, dict(orgs or {}))
        with self.lock:
            self.users[login] = user
        return user

    def fail_next(self, status: int, match: str = "", times: int = 1, reset_s: int = 3600) -> None:
        """The next `times` API requests whose path contains `match` answer `status`."""
        with self.lock:
            self.failures.extend(Failure(status, match, reset_s) for _ in range(times))

    def grant(self, repo: str, login: str, permission: str) -> None:
        with self.lock:
            self.permissions[(repo.lower(), login.lower())] = permission

    def add_issue_comment(self, repo: str, number: int, login: str, body: str) -> dict[str, Any]:
        """A comment someone wrote on an issue or a PR's conversation."""
        with self.lock:
            comment_id = len(self.comments) + 1
            comment = {
                "id": comment_id,
                "body": body,
                "html_url": f"https://github.example/{repo}/issues/{number}#issuecomment-{comment_id}",
                "repo": repo,
                "number": number,
                "user": self.user_json(login),
                "created_at": _iso(time.time()),
                "token": None,
            }
            self.comments.append(comment)
        return comment

    def user_json(self, login: str) -> dict[str, Any]:
        user = self.users.get(login)
        bot = login.endswith("[bot]")
        return {
            "login": login,
            "id": user.id if user else 40000 + sum(map(ord, login)),
            "type": "Bot" if bot else "User",
            "site_admin": False,
        }

    def replies(self, repo: str, number: int) -> list[str]:
        """What the App said on an issue or PR conversation."""
        with self.lock:
            return [
                str(c["body"])
                for c in self.comments
                if c["repo"].lower() == repo.lower() and c["number"] == number and c["token"]
            ]

    def merge(self, repo: str, number: int) -> FakePull:
        pull = self.pull(repo, number)
        with self.lock:
            pull.state, pull.merged = "closed", True
        return pull

    def squash_merge(self, repo: str, number: int) -> tuple[FakePull, str]:
        """Merge as GitHub's "Squash and merge" does: one new commit on the base with the PR's
        tree. Returns the PR and the base's tip before the merge (for the push payload)."""
        pull = self.pull(repo, number)
        bare = self.repos[repo.lower()].path
        before = git(bare, "rev-parse", f"refs/heads/{pull.base}").strip()
        tree = f"refs/heads/{pull.head}^{{tree}}"
        sha = git(bare, "commit-tree", tree, "-p", before, "-m", f"{pull.title} (#{number})")
        git(bare, "update-ref", f"refs/heads/{pull.base}", sha.strip(), before)
        with self.lock:
            pull.state, pull.merged, pull.merge_commit_sha = "closed", True, sha.strip()
        return pull, before

    def commit_json(self, repo: str, sha: str) -> dict[str, Any] | None:
        """`GET /repos/{o}/{r}/commits/{sha}`: its parents and line counts, read from git."""
        bare = self.repos[repo.lower()].path
        try:
            line = git(bare, "rev-list", "--parents", "-n", "1", sha).split()
        except subprocess.CalledProcessError:
            return None
        parents = line[1:]
        args = (
            ["diff", "--numstat", parents[0], line[0]]
            if parents
            else ["diff-tree", "--numstat", "-r", "--root", line[0]]
        )
        additions = deletions = 0
        for row in git(bare, *args).splitlines():
            fields = row.split("\t")
            if len(fields) == 3 and fields[0].isdigit():  # "-" for a binary file
                additions, deletions = additions + int(fields[0]), deletions + int(fields[1])
        return {
            "sha": line[0],
            "parents": [{"sha": p} for p in parents],
            "stats": {
                "additions": additions,
                "deletions": deletions,
                "total": additions + deletions,
            },
            "files": [],
        }

    def pull(self, repo: str, number: int) -> FakePull:
        for pull in self.pulls:
            if pull.repo.lower() == repo.lower() and pull.number == number:
                return pull
        raise KeyError(f"no PR #{number} on {repo}")

    def expire_installation_tokens(self) -> None:
        with self.lock:
            for issued in self.tokens.values():
                if issued.kind == "installation":
                    issued.revoked = True

    def expire_user_tokens(self, login: str) -> None:
        """The person's access tokens expire (their refresh tokens still work)."""
        with self.lock:
            for issued in self.tokens.values():
                if issued.kind == "user" and issued.login == login:
                    issued.expires_at = time.time() - 1

    def issued(self, kind: str) -> list[str]:
        with self.lock:
            return [t.token for t in self.tokens.values() if t.kind == kind]

    def all_tokens(self) -> list[str]:
        with self.lock:
            return list(self.tokens)

    # ------------------------------------------------------------ tokens

    def _installation_token(self) -> str:
        if self.token_style == "stateless":
            # The newer, longer form: `ghs_<app id>_<a JWT-like string>`.
            payload = base64.urlsafe_b64encode(os.urandom(48)).decode().rstrip("=")
            return f"ghs_{self.app_id}_eyJ{_random(30)}.{payload}.{_random(24)}"
        return "ghs_" + _random(36)

    def issue(self, kind: str, ttl: float | None, **extra: Any) -> Issued:
        prefix = {"installation": "", "user": "ghu_", "refresh": "ghr_"}[kind]
        token = (
            self._installation_token()
            if kind == "installation"
            else prefix + _random(76 if kind == "refresh" else 36)
        )
        issued = Issued(token, kind, time.time() + ttl if ttl else None, **extra)
        with self.lock:
            self.tokens[token] = issued
        return issued

    def lookup(self, token: str | None) -> Issued | None:
        if token is None:
            return None
        with self.lock:
            issued = self.tokens.get(token)
        return issued if issued is not None and issued.valid() else None

    def may_access(self, issued: Issued, repo: str) -> bool:
        if issued.kind == "user":
            return True
        if issued.kind != "installation":
            return False
        with self.lock:
            found = self.repos.get(repo.lower())
        if found is None or found.installation_id != issued.installation_id:
            return False
        return issued.repos is None or repo.split("/")[1] in issued.repos

    def pushable(self, repo: str, token: str) -> bool:
        issued = self.lookup(token)
        return (
            issued is not None and issued.kind == "installation" and self.may_access(issued, repo)
        )

    # ------------------------------------------------------------ webhooks

    def webhook(
        self, secret: str, event: str, payload: dict[str, Any], delivery: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """Body and headers of a delivery, signed as GitHub signs it."""
        body = json.dumps(payload).encode()
        return body, {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or secrets.token_hex(16),
            "X-Hub-Signature-256": sign(secret, body),
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/fake",
        }

    def pull_payload(self, pull: FakePull, action: str) -> dict[str, Any]:
        return {
            "action": action,
            "number": pull.number,
            "pull_request": self._pull_json(pull),
            "repository": self._repo_json(self.repos[pull.repo.lower()]),
            "installation": {"id": self.repos[pull.repo.lower()].installation_id},
        }

    def push_payload(self, repo: str, ref: str, after: str, before: str = "") -> dict[str, Any]:
        """A push of `ref` to `after`; with `before`, listing the commits it added (oldest
        first, at most 20, as GitHub does), without line counts."""
        commits = []
        if before:
            bare = self.repos[repo.lower()].path
            shas = git(bare, "rev-list", "--reverse", f"{before}..{after}").split()
            commits = [
                {
                    "id": sha,
                    "distinct": True,
                    "message": git(bare, "log", "-1", "--format=%s", sha).strip(),
                }
                for sha in shas[:20]
            ]
        return {
            "ref": ref,
            "before": before or "0" * 40,
            "after": after,
            "commits": commits,
            "head_commit": commits[-1] if commits else None,
            "repository": self._repo_json(self.repos[repo.lower()]),
            "installation": {"id": self.repos[repo.lower()].installation_id},
        }

    # ------------------------------------------------------------ JSON shapes

    def _repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        owner = repo.full_name.split("/")[0]
        return {
            "id": repo.id,
            "name": repo.full_name.split("/")[1],
            "full_name": repo.full_name,
            "private": True,
            "owner": {"login": owner, "id": 1},
            "html_url": f"{self.api_url}/{repo.full_name}",
            "clone_url": f"{self.git_url}/{repo.full_name}.git",
            "default_branch": repo.default_branch,
        }

    def _commits(self, pull: FakePull) -> int:
        """Commits on the PR's branch that its base does not have."""
        try:
            out = git(
                self.repos[pull.repo.lower()].path,
                "rev-list",
                "--count",
                f"refs/heads/{pull.base}..refs/heads/{pull.head}",
            )
        except subprocess.CalledProcessError:
            return 0
        return int(out.strip() or 0)

    def _pull_json(self, pull: FakePull) -> dict[str, Any]:
        return {
            "number": pull.number,
            "html_url": f"https://github.example/{pull.repo}/pull/{pull.number}",
            "state": pull.state,
            "merged": pull.merged,
            "draft": pull.draft,
            "merged_at": _iso(time.time()) if pull.merged else None,
            "merge_commit_sha": pull.merge_commit_sha,
            "created_at": _iso(pull.created_at),
            "commits": self._commits(pull),
            "title": pull.title,
            "body": pull.body,
            "user": {"login": pull.author},
            "head": {"ref": pull.head, "sha": pull.head_sha, "repo": {"full_name": pull.repo}},
            "base": {"ref": pull.base},
        }

    # ------------------------------------------------------------ the API

    def app(self) -> FastAPI:
        api = FastAPI()
        state = self

        def token_of(request: Request) -> str | None:
            header = request.headers.get("authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() in ("token", "bearer") and value:
                return value.strip()
            return None

        def error(status: int, message: str, **extra: Any) -> JSONResponse:
            return JSONResponse({"message": message, **extra}, status_code=status)

        @api.middleware("http")
        async def record_and_fail(request: Request, call_next: Any) -> Response:
            body = await request.body()
            try:
                parsed: Any = json.loads(body) if body else None
            except ValueError:
                parsed = body.decode(errors="replace")
            with state.lock:
                state.requests.append(
                    Recorded(request.method, request.url.path, token_of(request), parsed)
                )
                failure = next((f for f in state.failures if f.match in request.url.path), None)
                if failure is not None:
                    state.failures.remove(failure)
            if failure is not None:
                if failure.status == 401:
                    return error(401, "Bad credentials")
                if failure.status == 403:
                    return JSONResponse(
                        {"message": "API rate limit exceeded for installation."},
                        status_code=403,
                        headers={
                            "x-ratelimit-remaining": "0",
                            "x-ratelimit-limit": "5000",
                            "x-ratelimit-reset": str(int(time.time()) + failure.reset_s),
                        },
                    )
                return error(failure.status, "Server Error")
            response: Response = await call_next(request)
            return response

        def app_jwt(request: Request) -> str | None:
            """None when the request carries a valid App JWT, else why not."""
            token = token_of(request)
            if token is None:
                return "A JSON web token could not be decoded"
            try:
                claims = jwt.decode(
                    token,
                    state.public_key,
                    algorithms=["RS256"],
                    options={"require": ["exp", "iat", "iss"]},
                    leeway=60,
                )
            except jwt.PyJWTError as exc:
                return f"A JSON web token could not be decoded ({exc})"
            if str(claims["iss"]) != str(state.app_id):
                return "'Issuer' claim ('iss') must be an Integer"
            if claims["exp"] - claims["iat"] > 660:
                return "'Expiration time' claim ('exp') is too far in the future"
            return None

        def user_or_installation(request: Request, repo: str | None) -> Issued | JSONResponse:
            issued = state.lookup(token_of(request))
            if issued is None or issued.kind == "refresh":
                return error(401, "Bad credentials")
            if repo is not None and not state.may_access(issued, repo):
                return error(404, "Not Found")
            return issued

        @api.get("/app/installations")
        async def installations(request: Request) -> Any:
            problem = app_jwt(request)
            if problem:
                return error(401, problem)
            with state.lock:
                return [
                    {
                        "id": installation_id,
                        "app_id": state.app_id,
                        "account": {"login": data["account"], "type": "Organization"},
                        "repository_selection": "selected",
                    }
                    for installation_id, data in sorted(state.installations.items())
                ]

        @api.post("/app/installations/{installation_id}/access_tokens", status_code=201)
        async def access_token(installation_id: int, request: Request) -> Any:
            problem = app_jwt(request)
            if problem:
                return error(401, problem)
            if installation_id not in state.installations:
                return error(404, "Not Found")
            body = await request.json() if await request.body() else {}
            names = body.get("repositories")
            installed = {r.split("/")[1] for r in state.installations[installation_id]["repos"]}
            if names and not set(names) <= installed:
                return error(
                    422,
                    "There is at least one repository that does not exist or is not accessible to the parent installation.",
                )
            issued = state.issue(
                "installation",
                state.installation_token_ttl,
                installation_id=installation_id,
                repos=list(names) if names else None,
            )
            assert issued.expires_at is not None
            return {
                "token": issued.token,
                "expires_at": _iso(issued.expires_at),
                "permissions": {"contents": "write", "pull_requests": "write"},
                "repository_selection": "selected",
            }

        @api.get("/repos/{owner}/{name}/installation")
        async def repo_installation(owner: str, name: str, request: Request) -> Any:
            problem = app_jwt(request)
            if problem:
                return error(401, problem)
            repo = state.repos.get(f"{owner}/{name}".lower())
            if repo is None or repo.installation_id is None:
                return error(404, "Not Found")
            return {
                "id": repo.installation_id,
                "account": {"login": owner, "id": 1},
                "app_id": state.app_id,
                "target_type": "Organization",
            }

        @api.get("/repos/{owner}/{name}")
        async def get_repo(owner: str, name: str, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            repo = state.repos.get(full.lower())
            if repo is None:
                return error(404, "Not Found")
            return state._repo_json(repo)

        async def authorize_route(request: Request) -> Response:
            query = request.query_params
            if query.get("client_id") != state.client_id:
                return error(404, "Not Found")
            if state.authorizing is None:
                return error(403, "nobody is signed in at the fake GitHub")
            code = secrets.token_hex(10)
            with state.lock:
                state.codes[code] = state.authorizing
            target = query["redirect_uri"]
            sep = "&" if "?" in target else "?"
            return RedirectResponse(
                f"{target}{sep}{urlencode({'code': code, 'state': query.get('state', '')})}",
                status_code=302,
            )

        api.add_api_route("/login/oauth/authorize", authorize_route, methods=["GET"])

        @api.post("/login/oauth/access_token")
        async def oauth_token(request: Request) -> Any:
            raw = await request.body()
            if request.headers.get("content-type", "").startswith("application/json"):
                body = json.loads(raw)
            else:
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            if body.get("client_id") != state.client_id or (
                body.get("client_secret") != state.client_secret
            ):
                return {
                    "error": "incorrect_client_credentials",
                    "error_description": "The client_id and/or client_secret passed are incorrect.",
                }
            if body.get("grant_type") == "refresh_token":
                with state.lock:
                    old = state.tokens.get(str(body.get("refresh_token")))
                    if old is None or old.kind != "refresh" or not old.valid():
                        return {
                            "error": "bad_refresh_token",
                            "error_description": "The refresh token passed is incorrect or expired.",
                        }
                    old.revoked = True
                    state.refreshes += 1
                    login = old.login
                if state.refresh_delay:
                    await asyncio.sleep(state.refresh_delay)
            else:
                with state.lock:
                    login = state.codes.pop(str(body.get("code")), None)
                if login is None:
                    return {
                        "error": "bad_verification_code",
                        "error_description": "The code passed is incorrect or expired.",
                    }
            access = state.issue("user", state.user_token_ttl, login=login)
            refresh = state.issue("refresh", 15_811_200, login=login)
            return {
                "access_token": access.token,
                "expires_in": state.user_token_ttl,
                "refresh_token": refresh.token,
                "refresh_token_expires_in": 15_811_200,
                "scope": "",
                "token_type": "bearer",
            }

        def person(request: Request) -> FakeUser | JSONResponse:
            issued = state.lookup(token_of(request))
            if issued is None or issued.kind != "user" or issued.login not in state.users:
                return error(401, "Bad credentials")
            return state.users[issued.login]

        @api.get("/user")
        async def get_user(request: Request) -> Any:
            user = person(request)
            if isinstance(user, JSONResponse):
                return user
            public = next((e["email"] for e in user.emails if e["visibility"] == "public"), None)
            return {
                "login": user.login,
                "id": user.id,
                "name": user.name,
                "email": public,
                "type": "User",
            }

        @api.get("/user/emails")
        async def get_emails(request: Request) -> Any:
            user = person(request)
            if isinstance(user, JSONResponse):
                return user
            if state.emails_forbidden:
                return error(403, "Resource not accessible by integration")
            return user.emails

        @api.get("/user/memberships/orgs/{org}")
        async def get_membership(org: str, request: Request) -> Any:
            user = person(request)
            if isinstance(user, JSONResponse):
                return user
            if org.lower() in state.blocked_orgs:
                return error(403, "Resource not accessible by integration")
            found = next((o for o in user.orgs if o.lower() == org.lower()), None)
            if found is None:
                return error(404, "Not Found")
            base = state.api_url
            return {
                "url": f"{base}/orgs/{found}/memberships/{user.login}",
                "state": user.orgs[found],
                "role": "member",
                "organization_url": f"{base}/orgs/{found}",
                "organization": {
                    "login": found,
                    "id": 9000 + len(found),
                    "url": f"{base}/orgs/{found}",
                },
                "user": {"login": user.login, "id": user.id},
            }

        @api.post("/repos/{owner}/{name}/pulls", status_code=201)
        async def create_pull(owner: str, name: str, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            repo = state.repos.get(full.lower())
            if repo is None:
                return error(404, "Not Found")
            body = await request.json()
            head = str(body.get("head", "")).split(":")[-1]
            try:
                sha = git(repo.path, "rev-parse", "--verify", f"refs/heads/{head}").strip()
                git(repo.path, "rev-parse", "--verify", f"refs/heads/{body.get('base')}")
            except subprocess.CalledProcessError:
                return error(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                )
            with state.lock:
                if any(
                    p.repo.lower() == full.lower() and p.head == head and p.state == "open"
                    for p in state.pulls
                ):
                    return error(
                        422,
                        "Validation Failed",
                        errors=[
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {owner}:{head}.",
                            }
                        ],
                    )
                number = 1 + sum(1 for p in state.pulls if p.repo.lower() == full.lower())
                pull = FakePull(
                    number=number,
                    repo=repo.full_name,
                    title=str(body.get("title", "")),
                    body=str(body.get("body", "")),
                    head=head,
                    base=str(body.get("base")),
                    head_sha=sha,
                    author=who.login
                    if who.kind == "user" and who.login
                    else f"{state.app_slug}[bot]",
                    token=str(token_of(request)),
                    draft=bool(body.get("draft", False)),
                )
                state.pulls.append(pull)
            return JSONResponse(state._pull_json(pull), status_code=201)

        @api.get("/repos/{owner}/{name}/pulls")
        async def list_pulls(owner: str, name: str, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            head = request.query_params.get("head")
            wanted = request.query_params.get("state", "open")
            out = []
            for pull in state.pulls:
                if pull.repo.lower() != full.lower():
                    continue
                if head and f"{owner}:{pull.head}" != head:
                    continue
                if wanted != "all" and pull.state != wanted:
                    continue
                out.append(state._pull_json(pull))
            return out

        @api.get("/repos/{owner}/{name}/pulls/{number}")
        async def get_pull(owner: str, name: str, number: int, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            try:
                return state._pull_json(state.pull(full, number))
            except KeyError:
                return error(404, "Not Found")

        @api.post("/repos/{owner}/{name}/issues/{number}/comments", status_code=201)
        async def add_comment(owner: str, name: str, number: int, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            body = await request.json()
            comment = {
                "id": len(state.comments) + 1,
                "body": body.get("body", ""),
                "html_url": f"https://github.example/{full}/pull/{number}#issuecomment-{len(state.comments) + 1}",
                "repo": full,
                "number": number,
                "token": token_of(request),
                "user": state.user_json(
                    who.login if who.kind == "user" and who.login else f"{state.app_slug}[bot]"
                ),
                "created_at": _iso(time.time()),
            }
            with state.lock:
                state.comments.append(comment)
            return JSONResponse(comment, status_code=201)

        # ---- the App itself, issues, reviews and checks (GitHub as a client)

        @api.get("/app")
        async def get_app(request: Request) -> Any:
            problem = app_jwt(request)
            if problem:
                return error(401, problem)
            return {
                "id": state.app_id,
                "slug": state.app_slug,
                "name": "Nightshift (test)",
                "owner": {"login": "octo", "id": 1},
                "permissions": {"issues": "write", "checks": "read", "actions": "read"},
                "events": ["issues", "issue_comment", "check_run"],
            }

        @api.get("/repos/{owner}/{name}/collaborators/{login}/permission")
        async def get_permission(owner: str, name: str, login: str, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            level = state.permissions.get((full.lower(), login.lower()), "read")
            return {
                "permission": "write" if level == "maintain" else level,
                "role_name": level,
                "user": state.user_json(login),
            }

        async def add_reaction(kind: str, full: str, target: int, request: Request) -> Any:
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            body = await request.json()
            allowed = {"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"}
            if body.get("content") not in allowed:
                return error(422, "Validation Failed")
            reaction = {"kind": kind, "repo": full, "target": target, "content": body["content"]}
            with state.lock:
                state.reactions.append(reaction)
            return JSONResponse(
                {"id": len(state.reactions), "content": body["content"]}, status_code=201
            )

        @api.post("/repos/{owner}/{name}/issues/{number}/reactions")
        async def react_issue(owner: str, name: str, number: int, request: Request) -> Any:
            return await add_reaction("issue", f"{owner}/{name}", number, request)

        @api.post("/repos/{owner}/{name}/issues/comments/{comment_id}/reactions")
        async def react_comment(owner: str, name: str, comment_id: int, request: Request) -> Any:
            return await add_reaction("comment", f"{owner}/{name}", comment_id, request)

        @api.post("/repos/{owner}/{name}/pulls/comments/{comment_id}/reactions")
        async def react_review_comment(
            owner: str, name: str, comment_id: int, request: Request
        ) -> Any:
            return await add_reaction("review_comment", f"{owner}/{name}", comment_id, request)

        @api.get("/repos/{owner}/{name}/issues/{number}/comments")
        async def list_comments(owner: str, name: str, number: int, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            per_page = int(request.query_params.get("per_page", "30"))
            found = [
                {k: v for k, v in c.items() if k != "token"}
                for c in state.comments
                if c["repo"].lower() == full.lower() and c["number"] == number
            ]
            return found[:per_page]

        @api.get("/repos/{owner}/{name}/pulls/{number}/reviews/{review_id}/comments")
        async def list_review_comments(
            owner: str, name: str, number: int, review_id: int, request: Request
        ) -> Any:
            who = user_or_installation(request, f"{owner}/{name}")
            if isinstance(who, JSONResponse):
                return who
            if review_id not in state.review_comments:
                return error(404, "Not Found")
            return state.review_comments[review_id]

        @api.patch("/repos/{owner}/{name}/pulls/{number}")
        async def update_pull(owner: str, name: str, number: int, request: Request) -> Any:
            full = f"{owner}/{name}"
            who = user_or_installation(request, full)
            if isinstance(who, JSONResponse):
                return who
            try:
                pull = state.pull(full, number)
            except KeyError:
                return error(404, "Not Found")
            body = await request.json()
            with state.lock:
                if "body" in body:
                    pull.body = str(body["body"])
                if "title" in body:
                    pull.title = str(body["title"])
            return state._pull_json(pull)

        @api.get("/repos/{owner}/{name}/commits/{sha}")
        async def get_commit(owner: str, name: str, sha: str, request: Request) -> Any:
            who = user_or_installation(request, f"{owner}/{name}")
            if isinstance(who, JSONResponse):
                return who
            found = state.commit_json(f"{owner}/{name}", sha)
            return found if found is not None else error(422, f"No commit found for SHA: {sha}")

        @api.get("/repos/{owner}/{name}/actions/jobs/{job_id}/logs")
        async def job_logs(owner: str, name: str, job_id: int, request: Request) -> Any:
            who = user_or_installation(request, f"{owner}/{name}")
            if isinstance(who, JSONResponse):
                return who
            if job_id not in state.job_logs:
                return error(404, "Not Found")
            # As GitHub does: a redirect to a short-lived download URL.
            return RedirectResponse(
                f"{state.api_url}/_blobs/jobs/{job_id}?sig={_random(16)}", status_code=302
            )

        @api.get("/_blobs/jobs/{job_id}")
        async def job_log_blob(job_id: int) -> Any:
            if job_id not in state.job_logs:
                return error(404, "Not Found")
            return Response(state.job_logs[job_id], media_type="text/plain")

        @api.get("/repos/{owner}/{name}/actions/runs/{run_id}/jobs")
        async def run_jobs(owner: str, name: str, run_id: int, request: Request) -> Any:
            who = user_or_installation(request, f"{owner}/{name}")
            if isinstance(who, JSONResponse):
                return who
            jobs = state.run_jobs.get(run_id, [])
            return {"total_count": len(jobs), "jobs": jobs}

        @api.get("/repos/{owner}/{name}/check-suites/{suite_id}/check-runs")
        async def suite_runs(owner: str, name: str, suite_id: int, request: Request) -> Any:
            who = user_or_installation(request, f"{owner}/{name}")
            if isinstance(who, JSONResponse):
                return who
            runs = state.suite_runs.get(suite_id, [])
            return {"total_count": len(runs), "check_runs": runs}

        return api


# ---------------------------------------------------------------- git over HTTP


class _GitHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeGitHub

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _deny(self, body: bytes = b"Invalid username or token.\n") -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body()
        match = re.match(r"^/([^/]+)/([^/]+?)\.git(/.*)$", path)
        if not match:
            self.send_error(404)
            return
        repo = f"{match[1]}/{match[2]}"
        service = "receive-pack" if "receive-pack" in self.path else "upload-pack"
        token = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user_pass = base64.b64decode(header[6:]).decode(errors="replace")
            token = user_pass.partition(":")[2]
        with self.fake.lock:
            self.fake.git_requests.append((repo, service, token))
        if token is None or not self.fake.pushable(repo, token):
            self._deny()
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.fake.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(self.fake.git_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.split(b"\r\n"):
            key, _, value = line.decode(errors="replace").partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _handle
    do_POST = _handle


class GitServer:
    def __init__(self, fake: FakeGitHub) -> None:
        handler = type("Handler", (_GitHandler,), {"fake": fake})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> GitServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# ---------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class AppKey:
    private_pem: str
    public_pem: str


@pytest.fixture(scope="session")
def github_app_key() -> AppKey:
    """An RSA key for the fake App, generated once per test run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return AppKey(private, public)


@pytest.fixture
def github_fake(tmp_path: Path, github_app_key: AppKey) -> Iterator[FakeGitHub]:
    """The fake GitHub API and its git server, both on 127.0.0.1."""
    fake = FakeGitHub(tmp_path / "github", github_app_key.private_pem, github_app_key.public_pem)
    with BackgroundServer(fake.app()) as api, GitServer(fake) as gitsrv:
        fake.api_url = api.url
        fake.git_url = gitsrv.url
        yield fake


def github_settings(fake: FakeGitHub, **extra: Any) -> dict[str, Any]:
    """Settings overrides that point Nightshift at the fake."""
    from cryptography.fernet import Fernet

    values: dict[str, Any] = {
        "github_app_id": str(fake.app_id),
        "github_app_private_key": fake.private_key,
        "github_client_id": fake.client_id,
        "github_client_secret": fake.client_secret,
        "github_webhook_secret": "whsec-" + secrets.token_hex(16),
        "github_api_url": fake.api_url,
        "secret_keys": Fernet.generate_key().decode(),
    }
    values.update(extra)
    return values
