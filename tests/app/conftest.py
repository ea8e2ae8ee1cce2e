"""Fixtures for app tests against the fake GitHub: a runtime wired to it, served on a port its
public URL names (OAuth redirects come back to it), and a browser-like client that signs in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import make_repo
from tests.fakes.github import FakeGitHub, github_app_key, github_fake, github_settings
from tests.fakes.llm import ScriptBook
from tests.fakes.server import BackgroundServer

__all__ = ["github_app_key", "github_fake"]


class _Late:
    """An ASGI app filled in after the server has bound its port (the runtime needs the URL)."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@dataclass
class GitHubEnv:
    fake: FakeGitHub
    runtime: Any
    url: str

    def browser(self) -> httpx.Client:
        """A client that keeps cookies and sends our Origin on writes, as a browser would."""
        return httpx.Client(base_url=self.url, headers={"Origin": self.url}, timeout=30)

    def sign_in(
        self, client: httpx.Client, login: str, next_: str = "/", expect: int = 303
    ) -> httpx.Response:
        """The whole OAuth dance: our login → GitHub authorize → our callback."""
        self.fake.authorizing = login
        start = client.get("/auth/github/login", params={"next": next_})
        assert start.status_code == 302, start.text
        return self.authorize(client, start, expect)

    def link(self, client: httpx.Client, login: str, expect: int = 303) -> httpx.Response:
        """A signed-in browser asks to link GitHub (a form POST), then the same dance."""
        self.fake.authorizing = login
        start = client.post("/auth/github/link")
        assert start.status_code == 303, start.text
        return self.authorize(client, start, expect)

    def authorize(self, client: httpx.Client, start: httpx.Response, expect: int) -> httpx.Response:
        """GitHub approves and sends the browser back to our callback."""
        approved = httpx.get(start.headers["location"], timeout=30)
        assert approved.status_code == 302, approved.text
        done = client.get(approved.headers["location"])
        assert done.status_code == expect, done.text
        return done

    def deliver(
        self, event: str, payload: dict[str, Any], delivery: str | None = None
    ) -> httpx.Response:
        secret = self.runtime.settings.github_webhook_secret.get_secret_value()
        body, headers = self.fake.webhook(secret, event, payload, delivery)
        return httpx.post(f"{self.url}/github/webhooks", content=body, headers=headers, timeout=30)


@pytest.fixture
def make_github_env(
    make_settings: Any, openai_fake: ScriptBook, github_fake: FakeGitHub
) -> Iterator[Callable[..., GitHubEnv]]:
    from app.main import create_app
    from app.runtime import build_runtime

    started: list[tuple[Any, BackgroundServer]] = []

    def make(**overrides: Any) -> GitHubEnv:
        late = _Late()
        server = BackgroundServer(late)
        values = {
            "model": "openai:fake-model",
            "openai_base_url": openai_fake.url,  # type: ignore[attr-defined]
            "openai_api_key": "sk-test-fake-key-0123456789abcdef",
            "public_url": server.url,
            # Who may get a new user by signing in; tests of other rules override it.
            "github_allowed_users": "octocat",
            **github_settings(github_fake),
        }
        values.update(overrides)
        runtime = build_runtime(make_settings(**values))
        runtime.start()
        late.app = create_app(runtime=runtime)
        server.start()
        started.append((runtime, server))
        return GitHubEnv(github_fake, runtime, server.url)

    yield make
    for runtime, server in reversed(started):
        server.stop()
        runtime.close()


@pytest.fixture
def gh(make_github_env: Callable[..., GitHubEnv]) -> GitHubEnv:
    return make_github_env()


@pytest.fixture
def still_runtime(make_settings: Any, tmp_path: Path) -> Iterator[Any]:
    """A runtime that runs nothing (the test plays the runners), with repo `proj` registered
    and room for 100 sessions per person: `tests.factories.make_sessions` fills it."""
    from app.runtime import build_runtime
    from app.schemas import RepoCreate

    runtime = build_runtime(make_settings())
    runtime.sessions.dispatcher = None
    runtime.sessions.max_active_per_user = 100
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    yield runtime
    runtime.close()
