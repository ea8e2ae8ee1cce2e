"""The web viewer in a real browser (Debian's chromium through Playwright), against a live
server with the real executor, bubblewrap sandboxes and a fake model held open by gates."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.factories import ApiClient, Person, make_repo
from tests.fakes.llm import Call, ScriptBook, Turn
from tests.web.conftest import PHONE, Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def proj(api: ApiClient, tmp_path: Path) -> str:
    api.add_repo(make_repo(tmp_path, "proj"))
    return "proj"


def _tool(name: str, text: str = "", gate: threading.Event | None = None, **args: Any) -> Turn:
    """A model turn calling one tool, optionally held until `gate` is set."""
    return Turn(text=text, calls=[Call(name, args)], gate=gate)


def _ids_on_page(page: Any) -> list[int]:
    """Every event id the timeline holds, as often as it holds it."""
    raw = page.eval_on_selector_all("#timeline [data-ids]", "els => els.map(e => e.dataset.ids)")
    return [int(i) for chunk in raw for i in chunk.split()]


def _last_event_id(api: ApiClient, session_id: str) -> int:
    return int(api.session(session_id)["last_event_id"])


def _until(page: Any, predicate: Any, timeout: float = 15, what: str = "condition") -> Any:
    """Like `wait_for`, but lets Playwright deliver its callbacks (routes, events) meanwhile."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        page.wait_for_timeout(50)
    return value


def _fmt_ms(ms: int) -> str:
    """As the page shows durations (web/js/ui.js fmtMs)."""
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms / 1000:.2f} s" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _wait_status(page: Any, status: str, timeout: float = 30_000) -> None:
    page.wait_for_selector(f"#status .badge.s-{status}", timeout=timeout)


def test_typing_warms_a_sandbox_before_submit_then_streams_without_reload(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, proj: str
) -> None:
    held = threading.Event()
    # The model sends its first 600 characters, then stalls until `held` is set. (600: the
    # agent passes text on once 512 characters or 50 ms have gathered, checked per chunk.)
    text = "Reading the repository before changing anything at all. " * 12
    first = 600
    openai_fake.script(
        "contributing guide",
        Turn(text=text, calls=[Call("list_files", {"path": "."})], chunk=first, pause=held),
        Turn.tool("write_file", "Writing it.", path="CONTRIBUTING.md", content="Be kind.\n"),
        Turn.tool("finish", summary="Added CONTRIBUTING.md.", title="Add a contributing guide"),
    )
    page = web.page(alice)
    requests: list[tuple[str, str]] = []
    page.on("request", lambda r: requests.append((r.method, urlparse(r.url).path)))
    page.goto("/new")
    page.wait_for_selector("#repo option[value=proj]", state="attached")
    assert page.eval_on_selector("#repo", "s => s.value") == "proj"
    with page.expect_response(
        lambda r: r.request.method == "POST" and urlparse(r.url).path == "/api/repos/proj/warm"
    ) as warm:
        page.locator("#prompt").press_sequentially("add a contributing guide", delay=15)
    assert ("POST", "/api/sessions") not in requests  # warm-up starts while still typing
    assert warm.value.status == 202  # the warm-up endpoint is part of the public contract
    page.wait_for_selector("#warm[data-state=warm]", timeout=60_000)
    web.screenshot(page, "new-session-typed")

    page.keyboard.press("Control+Enter")  # submit from the keyboard
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f]+$"))
    warm_at = requests.index(("POST", "/api/repos/proj/warm"))
    assert warm_at < requests.index(("POST", "/api/sessions"))
    session_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__sameDocument = true")

    # The model's text shows while it is still streaming: the first chunk, nothing more yet.
    turn = page.locator("#timeline .item.turn .text").first
    page.wait_for_selector("#timeline .item.turn .text.streaming")
    assert turn.text_content() == text[:first]
    held.set()
    page.wait_for_function(
        "t => document.querySelector('#timeline .item.turn .text').textContent === t", arg=text
    )
    page.wait_for_selector("details.tool[data-tool=list_files][data-state=ok]")
    _wait_status(page, "finished")
    page.wait_for_selector("#pr a#pr-link")
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    # Timing: sandbox ready and first model request, as the API recorded them.
    session = api.session(session_id)
    assert session["start_mode"] == "warm"  # the session claimed the sandbox typing warmed
    assert (
        page.inner_text("#t-ready") == f"{_fmt_ms(session['start_ms'])} · {session['start_mode']}"
    )
    assert page.inner_text("#t-model") == _fmt_ms(session["first_model_ms"])
    # Tool cards open to show their output.
    card = page.locator("details.tool[data-tool=write_file]")
    card.locator("summary").click()
    assert "CONTRIBUTING.md" in card.inner_text()
    # The branch diff.
    page.click("#tab-changes")
    page.wait_for_selector(".diff-file")
    assert "+Be kind." in page.inner_text("#diff")
    web.screenshot(page, "session-finished-diff")
    assert sorted(_ids_on_page(page)) == list(range(1, _last_event_id(api, session_id) + 1))


def test_two_people_prompt_one_session_and_see_each_other(
    web: Web, api: ApiClient, alice: Person, bob: Person, openai_fake: ScriptBook, proj: str
) -> None:
    gate = threading.Event()
    openai_fake.script(
        "first task",
        Turn.tool("list_files", "Looking around.", path="."),
        Turn(text="Still thinking about it.", gate=gate),
    )
    openai_fake.script("second task", Turn.tool("finish", summary="Did the second task."))
    session = api.create(proj, "first task: tidy the readme")
    url = f"/sessions/{session['id']}"
    alice_page = web.page(alice, url)
    alice_page.wait_for_selector("details.tool[data-tool=list_files][data-state=ok]")
    bob_page = web.page(bob, url)  # the shared link

    for page in (alice_page, bob_page):
        first = page.locator("#timeline .item.prompt").first
        first.wait_for()
        assert first.locator(".author").inner_text() == "Alice Example"
        assert "first task: tidy the readme" in first.inner_text()
    # Each sees the other viewing.
    alice_page.wait_for_selector("#viewers li[data-login=bob]")
    bob_page.wait_for_selector("#viewers li[data-login=alice]")
    assert "(you)" in bob_page.inner_text("#viewers li[data-login=bob]")

    bob_page.fill("#follow-text", "second task from bob")
    bob_page.click("#follow button[type=submit]")
    for page in (alice_page, bob_page):
        bobs = page.locator("#timeline .item.prompt", has_text="second task from bob")
        bobs.wait_for()
        assert bobs.locator(".author").inner_text() == "Bob Example"
        queued = page.locator("#queue li[data-state=queued]")
        queued.wait_for()
        assert "Bob Example" in queued.inner_text() and "#1 in line" in queued.inner_text()
    web.screenshot(alice_page, "alice-sees-bobs-follow-up")

    gate.set()
    for page in (alice_page, bob_page):
        _wait_status(page, "finished")
        page.wait_for_selector("#timeline .item.prompt[data-state=done] >> text=second task")
        page.wait_for_function(
            "document.querySelectorAll('#queue li[data-state=done]').length == 2"
        )
        texts = page.locator("#timeline .item.prompt .author").all_inner_texts()
        assert texts == ["Alice Example", "Bob Example"]
    participants = {p["login"] for p in api.session(session["id"])["participants"]}
    assert participants == {"alice", "bob"}

    bob_page.close()  # Bob leaves: Alice sees him go
    alice_page.wait_for_selector("#viewers li[data-login=bob]", state="detached")


def test_stop_button_stops_a_running_session(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, proj: str
) -> None:
    openai_fake.script(
        "slow task",
        Turn.tool("run", "Running the long job.", command="sleep 60"),
        Turn.tool("finish", summary="never"),
    )
    session = api.create(proj, "slow task")
    page = web.page(alice, f"/sessions/{session['id']}")
    page.wait_for_selector("details.tool[data-tool=run] .result.pending")
    stop = page.locator("#stop")
    assert stop.is_visible()
    stop.focus()
    with page.expect_response(re.compile(r"/stop$")):
        page.keyboard.press("Enter")  # usable from the keyboard
    _wait_status(page, "stopped", 30_000)
    # The answer to Stop (said while the session still ran) must not undo what the stream
    # showed since.
    page.wait_for_function("document.getElementById('stop').textContent === 'Stop'")
    assert not stop.is_visible()
    _wait_status(page, "stopped", 1_000)
    page.wait_for_selector("#timeline .item.prompt[data-state=stopped]")
    page.wait_for_selector("#timeline .item.summary.stopped")
    assert api.session(session["id"])["status"] == "stopped"


def test_dropped_socket_resumes_with_no_duplicate_and_no_missing_event(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, proj: str
) -> None:
    second, third = threading.Event(), threading.Event()
    openai_fake.script(
        "resume test",
        Turn.tool("list_files", "First look.", path="."),
        _tool("read_file", "Reading while the socket is down.", gate=second, path="README.md"),
        _tool("finish", gate=third, summary="All seen."),
    )
    session = api.create(proj, "resume test")
    page = web.page(alice)
    connections: list[dict[str, Any]] = []
    replays: list[str] = []

    def route(ws: Any) -> None:
        server = ws.connect_to_server()
        conn: dict[str, Any] = {"url": ws.url, "page": ws, "server": server, "cut": False}

        def from_server(message: str | bytes) -> None:
            if conn["cut"]:
                return  # a dead network path: the server sends, the page never sees it
            ws.send(message)

        server.on_message(from_server)
        for frame in replays:
            # The server (or a proxy) replays an event the page already had: it must be ignored.
            ws.send(frame)
        connections.append(conn)

    page.route_web_socket(re.compile(r"/api/sessions/[0-9a-f]+/stream"), route)
    page.goto(f"/sessions/{session['id']}")
    page.wait_for_selector("details.tool[data-tool=list_files][data-state=ok]")
    _until(
        page,
        lambda: any(
            e["type"] == "model_request" and e["step"] == 2 for e in api.events(session["id"])
        ),
        15,
        "the second model request",
    )
    before = _last_event_id(api, session["id"])
    _until(page, lambda: max(_ids_on_page(page)) == before, 10, "the page to catch up")

    connections[0]["cut"] = True
    second.set()
    _until(
        page,
        lambda: any(
            e["type"] == "tool_result" and e["name"] == "read_file"
            for e in api.events(session["id"], before)
        ),
        15,
        "events the page cannot see",
    )
    missed = _last_event_id(api, session["id"]) - before
    assert missed > 3 and max(_ids_on_page(page)) == before
    replays.append(json.dumps(api.events(session["id"], before - 1)[0]))
    # The server drops the socket; the page reconnects and resumes after its last event.
    connections[0]["server"].close(code=1012, reason="restarting")
    connections[0]["page"].close(code=1012, reason="restarting")  # what the page is told
    _until(page, lambda: len(connections) == 2, 10, "the page to reconnect")
    assert parse_qs(urlparse(connections[1]["url"]).query)["after"] == [str(before)]
    page.wait_for_selector("details.tool[data-tool=read_file][data-state=ok]")
    third.set()
    _wait_status(page, "finished")
    last = _last_event_id(api, session["id"])
    _until(page, lambda: max(_ids_on_page(page)) == last, 10, "the last event")
    ids = _ids_on_page(page)
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"events shown twice: {duplicates}"
    assert sorted(ids) == list(range(1, last + 1)), "events missing from the page"
    assert page.locator("#timeline .item.turn").count() == 3
    assert len(connections) == 2


def test_falls_back_to_sse_then_polling_when_websockets_are_blocked(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, proj: str
) -> None:
    gate = threading.Event()
    openai_fake.script(
        "fallback",
        Turn.tool("list_files", "Looking.", path="."),
        _tool("finish", gate=gate, summary="Done over a fallback."),
    )
    session = api.create(proj, "fallback please")
    url = f"/sessions/{session['id']}"
    sse_page = web.page(alice, name="sse")
    sse_page.route_web_socket(re.compile(r"/stream"), lambda ws: ws.close(code=1011))
    sse_page.goto(url)
    sse_page.wait_for_selector("#live[data-state=live][title='server-sent events']", timeout=20_000)

    web.allow_console(r"events/stream")  # the blocked event stream, below, on purpose
    poll_page = web.page(alice, name="polling")
    poll_page.route_web_socket(re.compile(r"/stream"), lambda ws: ws.close(code=1011))
    poll_page.route(re.compile(r"/events/stream"), lambda route: route.abort())
    poll_page.goto(url)
    poll_page.wait_for_selector("#live[data-state=live][title=polling]", timeout=30_000)

    for page in (sse_page, poll_page):
        page.wait_for_selector("details.tool[data-tool=list_files][data-state=ok]")
        # Off the WebSocket, presence comes from heartbeats.
        page.wait_for_selector("#viewers li[data-login=alice]")
    gate.set()
    for page in (sse_page, poll_page):
        _wait_status(page, "finished")
    last = _last_event_id(api, session["id"])
    for page in (sse_page, poll_page):
        _until(page, lambda p=page: max(_ids_on_page(p)) == last, 10, "every event")
        assert sorted(_ids_on_page(page)) == list(range(1, last + 1))


def test_sessions_list_filters_and_updates_statuses_live(
    web: Web, api: ApiClient, alice: Person, bob: Person, openai_fake: ScriptBook, proj: str
) -> None:
    gate = threading.Event()
    openai_fake.script("held", Turn(text="Working.", gate=gate))
    openai_fake.script("quick", Turn.tool("finish", summary="Quick."))
    quick = api.create(proj, "quick one")
    api.wait_status(quick["id"], "finished")
    page = web.page(alice, "/")
    page.wait_for_selector(f"tr[data-id='{quick['id']}'][data-status=finished]")

    with api.as_(bob) as as_bob:
        r = as_bob.post("/api/sessions", json={"repo": proj, "prompt": "held by bob"})
        assert r.status_code == 201, r.text
        held = r.json()
    # A session someone else started appears, and its status moves without a reload.
    row = page.locator(f"tr[data-id='{held['id']}']")
    row.wait_for()
    page.wait_for_selector(f"tr[data-id='{held['id']}'][data-status=running]")
    assert "Bob Example" in row.inner_text()

    page.select_option("#f-status", "running")
    page.wait_for_selector(f"tr[data-id='{quick['id']}']", state="detached")
    assert page.locator("#rows tr").count() == 1
    assert "status=running" in page.url
    gate.set()
    # It finishes: it no longer matches "running" and leaves the filtered list.
    page.wait_for_selector(f"tr[data-id='{held['id']}']", state="detached", timeout=20_000)
    page.wait_for_selector("#empty:not([hidden])")

    page.select_option("#f-status", "")
    page.wait_for_selector(f"tr[data-id='{quick['id']}']")
    page.fill("#f-author", "bob")
    page.wait_for_url(re.compile(r"/\?author=bob$"))
    page.wait_for_selector(f"tr[data-id='{quick['id']}']", state="detached")
    page.wait_for_selector(f"tr[data-id='{held['id']}'][data-status=finished]")
    # The filters survive a reload (they live in the address).
    page.reload()
    page.wait_for_selector(f"tr[data-id='{held['id']}']")
    assert page.input_value("#f-author") == "bob"
    assert page.locator("#rows tr").count() == 1


def test_stats_page_shows_what_the_api_returns(
    web: Web,
    api: ApiClient,
    alice: Person,
    bob: Person,
    runtime: Any,
    openai_fake: ScriptBook,
    proj: str,
) -> None:
    from workers.events import PrStateChanged, SandboxReady

    openai_fake.script("stat", Turn.tool("finish", summary="ok"))
    ids = [api.create(proj, f"stat run {n}")["id"] for n in range(3)]
    for session_id in ids:
        api.wait_status(session_id, "finished")
    # One PR merged (as a GitHub webhook would report it), and a warm start on record.
    runtime.hub.publish(ids[0], PrStateChanged(state="merged"))
    first_prompt = api.http.get(f"/api/sessions/{ids[1]}/prompts").json()[0]["id"]
    runtime.hub.publish(
        ids[1],
        SandboxReady(
            mode="warm", sandbox_id="sb", image="img", ms_since_prompt=42, prompt_id=first_prompt
        ),
    )
    page = web.page(alice, "/stats")
    page.wait_for_selector("#latency tbody tr")
    stats = api.http.get("/api/stats").json()
    assert stats["merged"] == 1 and stats["sessions"] == 3
    assert page.inner_text("#merged") == "1"
    assert page.inner_text("#merged-share") == f"{stats['merged_share'] * 100:.1f}%"
    assert page.inner_text("#sessions-total") == "3"
    assert page.inner_text("#active") == str(stats["active_humans_5m"]) == "1"
    assert page.locator("#active-list li[data-login=alice]").count() == 1
    for mode, values in stats["start_latency"].items():
        row = page.locator(f"#latency tr[data-mode={mode}]")
        assert row.locator(".count").inner_text() == str(values["count"])
    assert page.inner_text("#latency tr[data-mode=warm] .p50") == "42 ms"
    # The chart: one bar group per day of the window, today's holding the API's numbers.
    assert page.locator("#chart svg g.bars").count() == stats["window_days"]
    today = stats["per_day"][-1]
    bars = page.locator(f"#chart svg g.bars[data-category='{today['date']}'] title")
    assert f"{today['sessions']} sessions" in (bars.text_content() or "")
    assert f"{today['prompts']} prompts" in (bars.text_content() or "")
    # How the PRs fared on GitHub: nothing measured yet reads as dashes, not zeros.
    assert page.inner_text("#prs tr[data-key=approval_rate] td") == "\u2013"  # an en dash
    assert page.inner_text("#prs tr[data-key=prs] td") == "0"
    # Two sessions' PRs as the GitHub App's webhooks record them: one reviewed and approved,
    # merged 2 hours after it opened, 3 of its 4 commits by the agent; one not reviewed yet.
    from sqlmodel import Session as DB

    from app.github_tables import GitHubAgentCommit, GitHubBaseCommit, GitHubPrStats
    from app.models import Session

    with DB(runtime.engine) as db:
        for number, session_id in enumerate(ids[:2], start=7):
            row = db.get(Session, session_id)
            assert row is not None
            row.pr_number = number
            db.add(row)
        db.add(
            GitHubPrStats(
                session_id=ids[0],
                pushes=2,
                agent_commits=3,
                pr_commits=4,
                opened_at=1000.0,
                merged_at=1000.0 + 7200,
                reviews=1,
                approvals=1,
                follow_ups=3,
            )
        )
        db.add(
            GitHubPrStats(
                session_id=ids[1], pushes=1, agent_commits=1, opened_at=5000.0, follow_ups=1
            )
        )
        # Pushed to the base branch: 30 lines by the first session's commit, 10 by a person.
        db.add(GitHubAgentCommit(session_id=ids[0], sha="a" * 40))
        db.add(GitHubBaseCommit(repo=proj, sha="a" * 40, additions=30))
        db.add(GitHubBaseCommit(repo=proj, sha="b" * 40, additions=10))
        db.commit()
    page.reload()
    page.wait_for_selector("#prs tr[data-key=prs]")
    prs = api.http.get("/api/stats").json()["pull_requests"]
    assert prs["prs"] == 2 and prs["reviewed"] == 1
    assert page.inner_text("#prs tr[data-key=prs] td") == "2"
    assert page.inner_text("#prs tr[data-key=approval_rate] td") == "100.0%"
    assert page.inner_text("#prs tr[data-key=revisions_per_pr] td") == "1.5"
    assert page.inner_text("#prs tr[data-key=median_open_to_merge] td") == "2.0 h"
    assert page.inner_text("#prs tr[data-key=agent_commit_share] td") == "75.0%"
    assert page.inner_text("#prs tr[data-key=follow_ups_per_pr] td") == "2"
    assert page.inner_text("#prs tr[data-key=agent_line_share] td") == "75.0% (30 of 40)"
    # Per repository: both PRs are this repository's.
    [mine] = api.http.get("/api/stats").json()["pull_requests_by_repo"]
    assert mine["name"] == proj and mine["prs"] == 2 and mine["approval_rate"] == 1.0
    cells = page.locator(f"#prs-repos tr[data-name='{proj}'] td").all_inner_texts()
    assert cells[:4] == ["2", "100.0%", "1.5", "2.0 h"], cells
    web.screenshot(page, "stats")

    # Live: someone prompts, and the page counts them without a reload.
    page.evaluate("window.__sameDocument = true")
    with api.as_(bob) as as_bob:
        assert as_bob.post("/api/sessions", json={"repo": proj, "prompt": "stat by bob"}).is_success
    page.wait_for_selector("#active-list li[data-login=bob]")
    assert page.inner_text("#active") == "2"
    assert page.evaluate("window.__sameDocument") is True


def test_phone_width_is_readable_and_keyboard_usable(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, proj: str
) -> None:
    openai_fake.script(
        "phone",
        Turn.tool(
            "write_file", "A long line " * 20, path="a/very/long/path/" * 4 + "f.md", content="x\n"
        ),
        Turn.tool("finish", summary="Done on a phone."),
    )
    session = api.create(proj, "phone check with a prompt that is long enough to wrap " * 3)
    api.wait_status(session["id"], "finished")
    pages = {
        "session": (f"/sessions/{session['id']}", "#timeline .item.summary"),
        "sessions": ("/", "#rows tr"),
        "new": ("/new", "#repo option"),
        "stats": ("/stats", "#latency tbody tr"),
    }
    for name, (path, ready) in pages.items():
        page = web.page(alice, path, name=f"phone-{name}", viewport=PHONE)
        page.wait_for_selector(ready, state="attached")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at phone width"
        size = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
        assert size >= 14
        shot = web.screenshot(page, f"phone-{name}")
        assert shot.stat().st_size > 10_000

    # Keyboard: tab from the top reaches the skip link, then the navigation.
    page = web.page(alice, "/", name="keyboard")
    page.wait_for_selector("#rows tr")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "/"
    link = page.locator(f"tr[data-id='{session['id']}'] td.title a")
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/sessions/{session['id']}")
    page.wait_for_selector("#timeline .item.summary")
    page.locator("#tab-activity").focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-changes"
    page.wait_for_selector(".diff-file")


def test_sign_in_with_a_token_then_out(web: Web, alice: Person, server: Any, runtime: Any) -> None:
    web.allow_console(r"/api/auth/token")  # the wrong token, on purpose
    page = web.page(None, "/stats")
    page.wait_for_url("**/signin?next=%2Fstats")
    assert not page.locator("#github").is_visible()  # GitHub sign-in is not configured here
    page.fill("#token", "ns_not-a-real-token")
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert "not valid" in page.inner_text("#error")
    page.fill("#token", alice.token)
    page.keyboard.press("Enter")
    page.wait_for_url("**/stats")
    page.wait_for_selector("#me >> text=Alice Example")
    cookie = next(c for c in page.context.cookies() if c["name"] == "nightshift_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["value"].startswith("nsw_") and alice.token not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # page scripts never see the token
    page.click("#me button")
    page.wait_for_url("**/signin")
    assert not [c for c in page.context.cookies() if c["name"] == "nightshift_session"]
    page.goto("/")
    page.wait_for_url("**/signin?next=%2F")


def test_unknown_session_says_so(web: Web, alice: Person) -> None:
    web.allow_console(r"/api/sessions/doesnotexist")
    page = web.page(alice, "/sessions/doesnotexist")
    page.wait_for_selector("#title >> text=No such session")
    assert "no session" in page.inner_text("#error")
    assert page.locator("#follow").is_hidden()


def test_prompts_and_model_output_render_as_text_never_markup(
    web: Web, api: ApiClient, alice: Person, runtime: Any, openai_fake: ScriptBook, proj: str
) -> None:
    from workers.events import Notice

    hostile = '<img src=x onerror="window.__owned=1"><script>window.__owned=2</script>'
    openai_fake.script("hostile", Turn(text=f"Echo: {hostile}"))
    session = api.create(proj, f"hostile {hostile}")
    api.wait_status(session["id"], "finished")
    runtime.hub.publish(session["id"], Notice(message=hostile, link="javascript:alert(1)"))
    page = web.page(alice, f"/sessions/{session['id']}")
    page.wait_for_selector("#timeline .item.notice")
    assert hostile in page.inner_text("#timeline .item.prompt .text")
    assert hostile in page.inner_text("#timeline .item.turn .text")
    assert page.locator("#timeline img, #timeline script").count() == 0
    assert page.locator("#timeline .item.notice a").count() == 0  # no javascript: link
    assert page.evaluate("window.__owned") is None


def test_a_follow_up_shows_where_it_came_from_on_its_prompt(
    web: Web, api: ApiClient, alice: Person, runtime: Any, openai_fake: ScriptBook, proj: str
) -> None:
    from workers.events import Notice

    openai_fake.script("origin", Turn.tool("finish", summary="ok"))
    session = api.create(proj, "origin of a prompt")
    api.wait_status(session["id"], "finished")
    [prompt] = api.http.get(f"/api/sessions/{session['id']}/prompts").json()
    comment = "https://github.com/acme/proj/pull/3#issuecomment-42"
    # As a GitHub mention queues it: the origin names the prompt it belongs to.
    runtime.hub.publish(
        session["id"],
        Notice(
            message="Follow-up from GitHub: a comment by @monalisa",
            link=comment,
            prompt_id=prompt["id"],
            follow_up=True,
        ),
    )
    page = web.page(alice, f"/sessions/{session['id']}")
    origin = page.wait_for_selector(
        f"#timeline .item.prompt[data-prompt-id='{prompt['id']}'] .origin"
    )
    assert origin is not None
    assert "a comment by @monalisa" in origin.inner_text()
    assert origin.query_selector("a") is not None
    assert origin.query_selector("a").get_attribute("href") == comment  # type: ignore[union-attr]
    assert page.locator("#timeline .item.notice").count() == 0


def test_parent_and_sub_sessions_link_to_each_other(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, proj: str
) -> None:
    openai_fake.script(
        "parent work",
        Turn.tool("spawn_session", "Delegating the docs.", prompt="child work: add docs"),
        Turn.tool("finish", summary="Delegated."),
    )
    openai_fake.script("child work", Turn.tool("finish", summary="Docs done."))
    parent = api.create(proj, "parent work")
    page = web.page(alice, f"/sessions/{parent['id']}")
    _wait_status(page, "finished")
    child_id = api.session(parent["id"])["children"][0]
    api.wait_status(child_id, "finished")
    spawned = page.locator("#timeline [data-type=child_spawned] a")
    assert spawned.get_attribute("href") == f"/sessions/{child_id}"
    page.wait_for_selector(f"#children a[href='/sessions/{child_id}']")
    page.wait_for_selector("#children .badge.s-finished")
    page.click(f"#children a[href='/sessions/{child_id}']")
    page.wait_for_url(f"**/sessions/{child_id}")
    page.wait_for_selector("#parent-link")
    assert page.get_attribute("#parent-link", "href") == f"/sessions/{parent['id']}"
    assert "child work: add docs" in page.inner_text("#timeline .item.prompt")
    # Starting a sub-session by hand goes through /new with the parent filled in.
    page.click("#related >> text=Start a sub-session")
    page.wait_for_url(f"**/new?repo=proj&parent={child_id}")
    page.wait_for_selector("#parent:not([hidden])")
    page.fill("#prompt", "grandchild work")
    page.click("#submit")
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f]+$"))
    grandchild = api.session(page.url.rsplit("/", 1)[1])
    assert grandchild["parent_id"] == child_id
