"""Browser fixtures: Debian's chromium driven by Playwright, one context per person.

Every page a test opens fails the test on a console error or an uncaught exception (a test
that expects one, e.g. a refused token, says so with `allow_console`). Each page's last state
is kept as a screenshot under `tests/artifacts/<test>/`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.factories import Person
from tests.fakes.server import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
COOKIE = "nightshift_session"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop running on this
    # thread while it is started, which would break `asyncio.run` in tests that follow.
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium; `make test` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class Web:
    """Opens pages as people, collecting what the browser logs as errors."""

    browser: Any
    runtime: Any
    base_url: str
    artifacts: Path
    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)
    pages: list[tuple[str, Any]] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)

    def allow_console(self, pattern: str) -> None:
        """Accept console errors matching `pattern` (for a 4xx the test provokes on purpose)."""
        self.allowed.append(re.compile(pattern))

    def context(self, person: Person | None, viewport: dict[str, int] | None = None) -> Any:
        ctx = self.browser.new_context(viewport=viewport or DESKTOP, base_url=self.base_url)
        ctx.set_default_timeout(15_000)
        if person is not None:  # signed in, as after `/signin` or GitHub
            session = self.runtime.web_sessions.create(person.user)
            # As `/signin` sets it: HttpOnly and SameSite=Lax.
            cookie = {"name": COOKIE, "value": session, "url": self.base_url}
            ctx.add_cookies([{**cookie, "httpOnly": True, "sameSite": "Lax"}])
        self.contexts.append(ctx)
        return ctx

    def page(
        self,
        person: Person | None,
        path: str | None = None,
        *,
        name: str | None = None,
        viewport: dict[str, int] | None = None,
    ) -> Any:
        page = self.context(person, viewport).new_page()
        label = name or (person.login if person else "anonymous")
        self.watch(page, label)
        if path is not None:
            page.goto(path)
        return page

    def watch(self, page: Any, label: str) -> None:
        def on_console(message: Any) -> None:
            if message.type != "error":
                return
            url = message.location.get("url", "") if message.location else ""
            self.errors.append(f"[{label}] console error: {message.text} ({url})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"[{label}] uncaught: {exc}"))
        self.pages.append((label, page))

    def screenshot(self, page: Any, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def close(self) -> None:
        for label, page in self.pages:
            if not page.is_closed():
                with contextlib.suppress(Exception):  # a crashed page has nothing to show
                    self.screenshot(page, f"last-{label}")
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def web(
    browser: Any, server: BackgroundServer, runtime: Any, request: pytest.FixtureRequest
) -> Iterator[Web]:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    helper = Web(browser, runtime, server.url, ARTIFACTS / name)
    try:
        yield helper
        errors = helper.unexpected_errors()
        assert not errors, "the browser logged errors:\n" + "\n".join(errors)
    finally:
        helper.close()
