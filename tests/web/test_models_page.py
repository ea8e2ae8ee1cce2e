"""The model picker, the session's model and its usage, and spend on the stats page, in a real
browser against a live server whose agent runs against the fake providers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, Person, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.web.conftest import Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODELS = "openai:fake-model,anthropic:fake-claude"


@pytest.fixture
def models() -> str:
    return MODELS


@pytest.fixture
def settings(
    make_settings: Any, openai_fake: ScriptBook, anthropic_fake: ScriptBook, models: str
) -> Any:
    return make_settings(
        models=models,
        model_prices="fake-model=2/8,fake-claude=3/15/0.3",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        anthropic_base_url=anthropic_fake.url,  # type: ignore[attr-defined]
        anthropic_api_key="sk-ant-test-fake-key-0123456789",
    )


@pytest.fixture
def proj(api: ApiClient, tmp_path: Path) -> str:
    api.add_repo(make_repo(tmp_path, "proj"))
    return "proj"


def _submit(page: Any, text: str) -> str:
    page.locator("#prompt").fill(text)
    page.click("#submit")
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f]+$"))
    return str(page.url.rsplit("/", 1)[1])


def test_the_picker_chooses_the_model_and_the_session_page_shows_it_and_its_cost(
    web: Web, api: ApiClient, alice: Person, anthropic_fake: ScriptBook, proj: str
) -> None:
    anthropic_fake.script(
        "tidy up", Turn.tool("list_files", "Looking.", path="."), Turn.tool("finish", summary="ok")
    )
    page = web.page(alice, "/new")
    page.wait_for_selector("#model option[value='anthropic:fake-claude']", state="attached")
    assert page.is_visible("#model-field")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
    assert options == ["openai:fake-model (default)", "anthropic:fake-claude"]
    assert page.eval_on_selector("#model", "s => s.value") == "openai:fake-model"
    page.select_option("#model", "anthropic:fake-claude")
    session_id = _submit(page, "tidy up the readme")
    page.wait_for_selector("#status .badge.s-finished", timeout=30_000)
    assert page.inner_text("#model") == "anthropic:fake-claude"
    assert [b["model"] for b in anthropic_fake.requests] == ["fake-claude", "fake-claude"]
    # Two turns of 100 input and 20 output tokens at 3/15 USD per million: 2 * 600e-6 USD.
    usage = api.session(session_id)["usage"]
    assert usage == {
        "input_tokens": 200,
        "output_tokens": 40,
        "cached_tokens": 0,
        "cost_usd": 0.0012,
    }
    page.wait_for_function("() => document.querySelector('#u-input').textContent === '200'")
    assert page.inner_text("#u-output") == "40"
    assert page.inner_text("#u-cached") == "0"
    assert page.inner_text("#u-cost") == "$0.0012"
    web.screenshot(page, "session-model-usage")
    # The next visit offers the model chosen last.
    page.goto("/new")
    page.wait_for_selector("#model option[value='anthropic:fake-claude']", state="attached")
    assert page.eval_on_selector("#model", "s => s.value") == "anthropic:fake-claude"


@pytest.mark.parametrize("models", ["openai:fake-model"])
def test_one_model_hides_the_picker(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, proj: str
) -> None:
    openai_fake.script("tidy up", Turn.tool("finish", summary="ok"))
    page = web.page(alice, "/new")
    page.wait_for_selector("#model option", state="attached")
    assert not page.is_visible("#model-field")
    session_id = _submit(page, "tidy up the readme")
    page.wait_for_selector("#status .badge.s-finished", timeout=30_000)
    assert api.session(session_id)["model"] == "openai:fake-model"
    assert page.inner_text("#model") == "openai:fake-model"


def test_the_stats_page_shows_spend_per_person_and_repository(
    web: Web,
    api: ApiClient,
    alice: Person,
    bob: Person,
    openai_fake: ScriptBook,
    anthropic_fake: ScriptBook,
    proj: str,
) -> None:
    openai_fake.script("spend", Turn.tool("finish", summary="ok"))
    anthropic_fake.script("spend", Turn.tool("finish", summary="ok"))
    first = api.create(proj, "spend a little")  # alice, fake-model: 100 * 2 + 20 * 8 = 360e-6
    with api.as_(bob) as as_bob:
        r = as_bob.post(
            "/api/sessions",
            json={"repo": proj, "prompt": "spend more", "model": "anthropic:fake-claude"},
        )  # bob, fake-claude: 100 * 3 + 20 * 15 = 600e-6
        assert r.status_code == 201, r.text
    for session_id in (first["id"], r.json()["id"]):
        api.wait_status(session_id, "finished")
    page = web.page(alice, "/stats")
    page.wait_for_selector("#spend-people tr[data-name=bob]")
    assert page.inner_text("#spend-total") == "$0.0010"
    rows = page.eval_on_selector_all("#spend-people tbody tr", "rs => rs.map(r => r.dataset.name)")
    assert rows == ["bob", "alice"]  # the biggest spender first
    bob_row = page.locator("#spend-people tr[data-name=bob]")
    assert bob_row.locator(".prompts").inner_text() == "1"
    assert bob_row.locator(".input").inner_text() == "100"
    assert bob_row.locator(".output").inner_text() == "20"
    assert bob_row.locator(".cost").inner_text() == "$0.0006"
    assert page.locator("#spend-people tr[data-name=alice] .cost").inner_text() == "$0.0004"
    repo_row = page.locator("#spend-repos tr[data-name=proj]")
    assert repo_row.locator(".prompts").inner_text() == "2"
    assert repo_row.locator(".input").inner_text() == "200"
    assert repo_row.locator(".cost").inner_text() == "$0.0010"
    web.screenshot(page, "stats-spend")
