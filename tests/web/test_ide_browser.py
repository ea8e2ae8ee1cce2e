"""VS Code from the session page, in a real browser: the button opens a tab on the IDE origin
through a single-use link. Around the stand-in always; with real code-server (`make ide`) when
it is installed, whose workbench loads and whose saved edit lands in the session's diff."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import ApiClient, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer
from tests.web.conftest import Web

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("bwrap"), reason="the IDE needs bwrap (bubblewrap)"),
]
STANDIN = Path(__file__).parents[1] / "fakes" / "ide_standin.py"
CODE_SERVER = "/usr/local/bin/code-server"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ide_port() -> int:
    return _free_port()


@pytest.fixture
def settings(
    make_settings: Any, openai_fake: ScriptBook, ide_port: int, request: pytest.FixtureRequest
) -> Any:
    values = {
        "ide": True,
        "ide_command": "python3 /workspace/ide_standin.py",
        "ide_host": "127.0.0.1",
        **getattr(request, "param", {}),
    }
    host = values.pop("ide_host")
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        idle_seconds=600,
        ide_origin=f"http://{host}:{ide_port}",
        **values,
    )


@pytest.fixture
def ide(server: BackgroundServer, settings: Any, ide_port: int) -> Iterator[BackgroundServer]:
    from app.api.ide_proxy import create_ide_app

    app = create_ide_app(server.server.config.app, settings.ide_origin)
    with BackgroundServer(app, port=ide_port) as srv:
        yield srv


def _idle_session(api: ApiClient, openai_fake: ScriptBook, tmp_path: Path) -> str:
    files = {"README.md": "# proj\n", "ide_standin.py": STANDIN.read_text()}
    api.add_repo(make_repo(tmp_path, "proj", files))
    openai_fake.script("look at it", Turn.tool("finish", summary="Looked."))
    session_id = str(api.create("proj", "look at it")["id"])
    api.wait_status(session_id, "idle", timeout=60)
    return session_id


def test_open_vs_code_opens_a_tab_on_the_ide_origin(
    web: Web,
    api: ApiClient,
    ide: BackgroundServer,
    openai_fake: ScriptBook,
    tmp_path: Path,
) -> None:
    session_id = _idle_session(api, openai_fake, tmp_path)
    page = web.page(api.person, f"/sessions/{session_id}")
    page.wait_for_selector("#ide-panel:not([hidden])")
    with page.context.expect_page() as opened:
        page.click("#ide-open")
    tab = opened.value
    tab.wait_for_selector("#ok")
    assert tab.url == f"{ide.url}/api/sessions/{session_id}/ide/"
    assert tab.evaluate("window.opener") is None
    assert tab.text_content("#ok") == "workbench"
    page.wait_for_selector("#ide-panel[data-state=open]")
    assert "VS Code is open in another tab" in page.text_content("#ide-status")
    # The tab holds the pass as a cookie its pages cannot read, sent only under this session.
    cookies = tab.context.cookies(f"{ide.url}/api/sessions/{session_id}/ide/")
    scoped = [c for c in cookies if c["name"] == "nightshift_ide"]
    assert scoped and scoped[0]["httpOnly"] and scoped[0]["path"].endswith(f"/{session_id}/ide/")
    assert tab.evaluate("document.cookie") == ""
    elsewhere = tab.context.cookies(f"{ide.url}/api/sessions/another/ide/")
    assert not [c for c in elsewhere if c["name"] == "nightshift_ide"]
    # A save in the IDE (the stand-in's write) shows in the session's timeline, with who made it.
    tab.evaluate("fetch('write?path=notes.txt', {method: 'POST', body: 'hi'}).then(r => r.text())")
    page.wait_for_selector("#timeline [data-type=ide_files_edited]", timeout=30_000)
    shown = page.text_content("#timeline [data-type=ide_files_edited]") or ""
    assert "Alice Example edited in VS Code:" in shown and "notes.txt" in shown


@pytest.mark.parametrize("settings", [{"ide_host": "{session}.localhost"}], indirect=True)
def test_each_sessions_ide_opens_on_a_host_of_its_own(
    web: Web, api: ApiClient, ide: BackgroundServer, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    session_id = _idle_session(api, openai_fake, tmp_path)
    page = web.page(api.person, f"/sessions/{session_id}")
    page.wait_for_selector("#ide-panel:not([hidden])")
    with page.context.expect_page() as opened:
        page.click("#ide-open")
    tab = opened.value
    tab.wait_for_selector("#ok")
    own = f"http://{session_id}.localhost:{ide.port}"
    assert tab.url == f"{own}/api/sessions/{session_id}/ide/"
    # The pass lives on the session's own host: no other session's IDE host gets it.
    assert [c["domain"] for c in tab.context.cookies(tab.url) if c["name"] == "nightshift_ide"] == [
        f"{session_id}.localhost"
    ]
    other = f"http://other0session.localhost:{ide.port}/api/sessions/{session_id}/ide/"
    assert not [c for c in tab.context.cookies(other) if c["name"] == "nightshift_ide"]


@pytest.mark.parametrize("settings", [{"ide": False}], indirect=True)
def test_the_vs_code_panel_is_hidden_on_a_server_without_the_ide(
    web: Web, api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("look", Turn.tool("finish", summary="Looked."))
    session_id = api.create("proj", "look")["id"]
    page = web.page(api.person, f"/sessions/{session_id}")
    page.wait_for_selector("#ide-open", state="attached")
    page.wait_for_load_state("networkidle")
    assert not page.is_visible("#ide-panel")
    assert not page.is_visible("#ide-open")


def _usage(marker: str) -> tuple[float, int]:
    """Resident memory (MB) and threads of the processes whose command line holds `marker`,
    and their descendants (code-server's server, extension host and helpers)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    threads: dict[int, int] = {}
    roots: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(entry.name)
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
        threads[pid] = int(fields.get("Threads", "0").strip())
        if marker in cmdline and "/bin/sh" not in cmdline:
            roots.add(pid)
    total, tasks = 0, 0
    for pid in rss:
        walk = pid
        while walk and walk not in roots:
            walk = parents.get(walk, 0)
        if walk:
            total, tasks = total + rss[pid], tasks + threads[pid]
    return total / 1024, tasks


@pytest.mark.skipif(
    not os.access(CODE_SERVER, os.X_OK),
    reason=f"real code-server is not installed at {CODE_SERVER} (`make ide` installs it from npm)",
)
@pytest.mark.parametrize("settings", [{"ide_command": "code-server"}], indirect=True)
def test_real_code_server_loads_and_an_edit_lands_in_the_sessions_diff(
    web: Web,
    api: ApiClient,
    ide: BackgroundServer,
    openai_fake: ScriptBook,
    tmp_path: Path,
) -> None:
    session_id = _idle_session(api, openai_fake, tmp_path)
    figures: dict[str, float | int] = {}
    began = time.monotonic()
    opened = api.http.post(f"/api/sessions/{session_id}/ide", timeout=120)
    assert opened.status_code == 200, opened.text
    figures["request_to_socket_ready_s"] = time.monotonic() - began
    figures["socket_ready_inside_s"] = opened.json()["ready_s"]
    figures["rss_idle_mb"], figures["threads_idle"] = _usage(".nightshift-ide/ide.sock")

    tab = web.context(None).new_page()
    refused: list[str] = []  # what the proxy's content policy stopped code-server doing
    tab.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
    began = time.monotonic()
    tab.goto(opened.json()["url"])
    figures["first_page_s"] = time.monotonic() - began
    tab.wait_for_selector(".monaco-workbench", timeout=90_000)
    readme = tab.get_by_role("treeitem", name=re.compile("README.md"))
    readme.wait_for(timeout=90_000)
    figures["workbench_ready_s"] = time.monotonic() - began
    figures["rss_with_workbench_mb"], figures["threads_with_workbench"] = _usage(
        ".nightshift-ide/ide.sock"
    )

    readme.click()
    editor = tab.locator(".monaco-editor .view-lines").first
    editor.wait_for(timeout=30_000)
    editor.click()
    tab.keyboard.press("Control+End")
    tab.keyboard.type("\nedited in VS Code\n")
    tab.keyboard.press("Control+s")
    edited = wait_for(
        lambda: [e for e in api.events(session_id) if e["type"] == "ide_files_edited"],
        60,
        "the edit to be recorded",
    )
    assert edited[0]["author"]["login"] == "alice"
    assert edited[0]["files"] == ["README.md"]
    web.screenshot(tab, "code-server-workbench")
    assert not refused, refused

    openai_fake.script("keep it", Turn.tool("finish", summary="Kept."))
    api.http.post(f"/api/sessions/{session_id}/prompts", json={"text": "keep it"})
    # The session says it pushed (its index row has the head), not only its event log: the
    # log is written first, the index a moment later.
    wait_for(lambda: api.http.get(f"/api/sessions/{session_id}").json().get("head_sha"), 60, "push")
    diff = httpx.get(
        f"{api.base_url}/api/sessions/{session_id}/diff", headers=api.http.headers, timeout=30
    )
    assert "+edited in VS Code" in diff.json()["diff"]
    web.artifacts.mkdir(parents=True, exist_ok=True)
    (web.artifacts / "figures.json").write_text(json.dumps(figures, indent=2))
