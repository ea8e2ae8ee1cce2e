"""The web viewer on a phone (390 by 844): the sessions list, a session page and the prompt box
fit the width (no sideways scroll), their controls are finger-sized, the event stream wraps,
and a prompt can be written and submitted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, Person, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.web.conftest import PHONE, Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WIDTH = PHONE["width"]
LONG = "an-unbroken-token-" * 12  # wider than the phone, with no place to break


def _fits(page: Any, name: str) -> None:
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= WIDTH, f"{name} scrolls sideways: {width}px wide on a {WIDTH}px screen"


def _small_targets(page: Any, selector: str) -> list[str]:
    """Visible controls under `selector` shorter than 44 px (too small for a finger)."""
    found: list[str] = page.eval_on_selector_all(
        selector,
        """els => els.filter(e => e.offsetParent !== null)
                   .filter(e => e.getBoundingClientRect().height < 44)
                   .map(e => `${e.tagName} ${e.id || e.textContent.trim().slice(0, 30)}`)""",
    )
    return found


def test_sessions_session_and_prompt_fit_a_phone_and_the_prompt_submits(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script(
        "phone one",
        Turn.tool("run", f"Looking at {LONG}", command=f"echo {LONG}"),
        Turn.tool("finish", summary=f"Done: {LONG}"),
    )
    first = api.create("proj", f"phone one {LONG}")
    api.wait_status(first["id"], "finished")

    sessions = web.page(alice, "/", name="phone-sessions", viewport=PHONE)
    sessions.wait_for_selector(f"tr[data-id='{first['id']}']")
    _fits(sessions, "the sessions list")
    assert _small_targets(sessions, ".top nav a, main button, main select") == []

    session = web.page(alice, f"/sessions/{first['id']}", name="phone-session", viewport=PHONE)
    session.wait_for_selector("#timeline .item.summary")
    session.click("#timeline details.tool summary")  # open the run card: its output wraps
    session.wait_for_selector("#timeline details.tool[open] pre")
    _fits(session, "the session page")
    assert LONG in session.inner_text("#timeline")
    assert _small_targets(session, ".top nav a, .tabs button, #follow button") == []

    openai_fake.script("phone two", Turn.tool("finish", summary="Answered from a phone."))
    new = web.page(alice, "/new", name="phone-new", viewport=PHONE)
    new.wait_for_selector("#repo option", state="attached")
    _fits(new, "the prompt box")
    assert _small_targets(new, ".top nav a, #compose button, #compose select") == []
    box = new.locator("#prompt").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= WIDTH
    new.fill("#prompt", f"phone two {LONG}")
    _fits(new, "the prompt box with a long prompt")
    new.click("#submit")
    new.wait_for_url("**/sessions/*")
    session_id = new.url.rsplit("/", 1)[1]
    assert api.wait_status(session_id, "finished")["status"] == "finished"
    new.wait_for_selector("#timeline .item.summary")
    _fits(new, "the new session's page")
