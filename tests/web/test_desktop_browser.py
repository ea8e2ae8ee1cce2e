"""The session page's desktop in a real browser: noVNC (Debian's novnc, served at /novnc/)
connects through the API's WebSocket to x11vnc in the session's bubblewrap sandbox."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from app.api.routes.desktop import NOVNC_DIR
from tests.factories import ApiClient, Person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.web.conftest import Web

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("Xvfb") and shutil.which("x11vnc") and (NOVNC_DIR / "core").is_dir()),
        reason="the desktop needs Xvfb, x11vnc and novnc (apt-get install xvfb x11vnc novnc)",
    ),
]


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook, request: pytest.FixtureRequest) -> Any:
    values = {"idle_seconds": 600, "desktop": True, **getattr(request, "param", {})}
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        **values,
    )


def test_session_page_opens_the_desktop_view_only_then_takes_control(
    web: Web, api: ApiClient, bob: Person, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("show me", Turn.tool("finish", summary="Done."))
    session_id = api.create("proj", "show me")["id"]
    api.wait_status(session_id, "idle", timeout=60)

    page = web.page(api.person, f"/sessions/{session_id}")
    page.click("#desktop-open")
    page.wait_for_selector("#desktop-panel[data-connected=true]", timeout=30_000)
    assert page.text_content("#desktop-status") == "Connected · view only"
    # noVNC sized its canvas from the server's ServerInit: the sandbox's 1280x800 display.
    size = page.eval_on_selector("#desktop-screen canvas", "c => [c.width, c.height]")
    assert size == [1280, 800]
    # Its pixels came from the sandbox: Xvfb's white root (`-wr`), not an empty canvas.
    page.wait_for_function(
        """() => {
          const c = document.querySelector('#desktop-screen canvas');
          const [r, g, b, a] = c.getContext('2d').getImageData(20, 20, 1, 1).data;
          return r === 255 && g === 255 && b === 255 && a === 255;
        }"""
    )
    assert page.is_visible("#desktop-control")

    page.click("#desktop-control")
    page.wait_for_function(
        "document.getElementById('desktop-status').textContent.includes('you have control')"
    )
    page.wait_for_selector("#timeline [data-type=desktop_control_taken]")
    assert "Alice Example took control of the desktop" in page.text_content("#timeline")
    events = wait_for(
        lambda: [e for e in api.events(session_id) if e["type"] == "desktop_control_taken"],
        10,
        "the control event",
    )
    assert events[0]["login"] == "alice"
    web.screenshot(page, "desktop-in-control")

    # Someone who did not prompt the session watches, with no way to take control.
    watcher = web.page(bob, f"/sessions/{session_id}", name="bob")
    watcher.click("#desktop-open")
    watcher.wait_for_selector("#desktop-panel[data-connected=true]", timeout=30_000)
    assert watcher.text_content("#desktop-status") == "Connected · view only"
    assert not watcher.is_visible("#desktop-control")

    page.click("#desktop-close")
    page.wait_for_selector("#desktop-panel[data-connected=false]")
    assert page.is_visible("#desktop-open")


def test_desktop_button_says_why_when_the_session_has_no_live_sandbox(
    web: Web, api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("quick one", Turn.tool("finish", summary="Done."))
    session_id = api.create("proj", "quick one")["id"]
    api.wait_status(session_id, "idle", timeout=60)
    assert api.http.post(f"/api/sessions/{session_id}/stop").status_code == 200
    api.wait_status(session_id, "stopped", "finished", timeout=30)

    web.allow_console(r"409")
    page = web.page(api.person, f"/sessions/{session_id}")
    page.click("#desktop-open")
    status = page.locator("#desktop-status")
    # On a busy machine the stopped runner may still be handing its sandbox back: the answer
    # can take a while, and what the status says meanwhile is in the failure.
    try:
        wait_for(lambda: "no live sandbox" in status.inner_text(), 60, "the desktop's refusal")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the desktop's status says {status.inner_text()!r}") from None
    assert page.is_visible("#desktop-open")
    assert page.is_hidden("#desktop-screen")


@pytest.mark.parametrize("settings", [{"desktop": False}], indirect=True)
def test_the_desktop_panel_is_hidden_on_a_server_that_does_not_show_desktops(
    web: Web, api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("quick one", Turn.tool("finish", summary="Done."))
    session_id = api.create("proj", "quick one")["id"]
    page = web.page(api.person, f"/sessions/{session_id}")
    page.wait_for_selector("#desktop-open", state="attached")
    page.wait_for_load_state("networkidle")
    assert not page.is_visible("#desktop-panel")
    assert not page.is_visible("#desktop-open")
