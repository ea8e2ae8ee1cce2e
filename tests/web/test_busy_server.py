"""The web viewer on a server too busy to take a prompt in: the page says so and sends it
again once a slot frees, for a new session and for a follow-up; each is created once."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.factories import ApiClient, Person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.web.conftest import Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def settings(settings: Any) -> Any:
    """The suite's settings, taking in one prompt at a time with no wait for a slot: a held
    one sheds the rest."""
    return settings.model_copy(update={"max_pending_creates": 1, "max_pending_wait_ms": 0})


def _taking_in() -> float:
    return REGISTRY.get_sample_value("nightshift_prompts_taking_in") or 0.0


@contextmanager
def slot_held(runtime: Any, api: ApiClient, person: Person, prompt: str) -> Iterator[None]:
    """A creation taken in and held: another process holds the control DB's write lock."""
    control_db = sqlite3.connect(
        runtime.settings.control_db_url.removeprefix("sqlite:///"), isolation_level=None
    )
    before = _taking_in()
    control_db.execute("BEGIN IMMEDIATE")
    answers: list[int] = []

    def hold() -> None:
        with api.as_(person) as client:
            answers.append(
                client.post("/api/sessions", json={"repo": "proj", "prompt": prompt}).status_code
            )

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        wait_for(lambda: _taking_in() == before + 1, 30, "a held creation")
        yield
    finally:
        control_db.execute("COMMIT")
        control_db.close()
        holder.join(30)
    assert answers == [201]


def test_a_shed_session_and_follow_up_are_sent_again_and_made_once(
    web: Web, api: ApiClient, alice: Person, runtime: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    web.allow_console(r"status of 503")  # the browser logs each shed answer
    api.add_repo(make_repo(tmp_path, "proj"))
    for name in ("FIRST", "SECOND", "HELD", "AGAIN"):
        openai_fake.script(name, Turn.tool("finish", f"{name} done.", summary=f"{name}."))
    page = web.page(alice, "/new")
    page.wait_for_selector("#repo option[value=proj]", state="attached")
    page.fill("#prompt", "FIRST from the web")
    page.wait_for_selector("#warm[data-state=warm]", timeout=60_000)
    shed_before = REGISTRY.get_sample_value("nightshift_prompts_shed_total") or 0.0
    with slot_held(runtime, api, alice, "HELD one"):
        page.click("#submit")
        page.wait_for_function(
            "() => /Server busy — trying again in \\d/.test(document.getElementById('submit').textContent)"
        )
        web.screenshot(page, "new-session-busy")
        assert "/new" in page.url
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f]+$"), timeout=30_000)
    session_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#status .badge.s-finished, #status .badge.s-idle", timeout=30_000)

    page.fill("#follow-text", "SECOND from the web")
    button = page.locator("#follow button[type=submit]")
    label = button.inner_text()
    with slot_held(runtime, api, alice, "AGAIN held"):
        button.click()
        page.wait_for_function(
            "() => /Server busy/.test(document.querySelector('#follow button[type=submit]').textContent)"
        )
    page.wait_for_function("() => document.getElementById('follow-text').value === ''")
    assert button.inner_text() == label and page.locator("#follow-error").is_hidden()
    prompts = api.http.get(f"/api/sessions/{session_id}/prompts").json()
    assert [p["text"] for p in prompts] == ["FIRST from the web", "SECOND from the web"]
    titles = sorted(s["title"] for s in api.http.get("/api/sessions").json()["sessions"])
    assert titles == ["AGAIN held", "FIRST from the web", "HELD one"]
    assert (REGISTRY.get_sample_value("nightshift_prompts_shed_total") or 0.0) > shed_before + 1
