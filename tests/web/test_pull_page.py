"""The local pull request's review page in a real browser: the diff is shown (agent-written
text stays text), the author merges with one click, and the stats page counts the merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import ApiClient, Person, git, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.web.conftest import PHONE, Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def test_review_merge_and_the_stats_count_it(
    web: Web, api: ApiClient, alice: Person, bob: Person, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "review page",
        Turn.tool("write_file", "Writing.", path="hello.py", content=f"print(1)  # {HOSTILE}\n"),
        Turn.tool("finish", summary=f"Adds hello.py. {HOSTILE}", title=f"Add hello {HOSTILE}"),
    )
    session = api.create("proj", "review page please")
    done = api.wait_status(session["id"], "finished", "failed")
    assert done["status"] == "finished", api.events(session["id"])
    link = done["pr_url"]
    pr_path = "/pulls/" + link.rsplit("/", 1)[1]

    # The session page links to the review page.
    page = web.page(alice, f"/sessions/{session['id']}")
    href = page.get_attribute("#pr-link", "href", timeout=15_000)
    assert href is not None and href.endswith(pr_path)

    # Bob may read, not merge; on a phone the page fits the width (the diff scrolls in its box).
    seen_by_bob = web.page(bob, pr_path, name="bob", viewport=PHONE)
    seen_by_bob.wait_for_selector(".diff-file")
    assert seen_by_bob.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    assert seen_by_bob.locator("#actions").is_hidden()
    assert "admin may merge" in seen_by_bob.inner_text("#who-merges")

    page = web.page(alice, pr_path, name="alice-review")
    page.wait_for_selector(".diff-file .add")
    assert page.inner_text("#files").startswith("hello.py")
    added = page.locator(".diff-file .add").all_inner_texts()
    assert any(line.startswith("+print(1)") and HOSTILE in line for line in added)
    assert page.locator(".diff-file .hunk").count() == 1
    # Agent-written title, body and diff are text: nothing injected ran or became markup.
    assert HOSTILE in page.inner_text("#title") and HOSTILE in page.inner_text("#body")
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.inner_text("#commits").count("Add hello") == 1
    assert "alice@example.com" in page.inner_text("#commits")

    page.click("#merge")
    page.wait_for_selector("#state .badge.s-merged")
    assert page.locator("#actions").is_hidden()
    assert "Merged by" in page.inner_text("#facts")
    assert git(repo, "rev-parse", "main").strip() == done["head_sha"]

    stats = web.page(alice, "/stats", name="stats")
    stats.wait_for_function("document.getElementById('merged').textContent === '1'")
    assert stats.inner_text("#merged-of").startswith("of 1 sessions")


def test_a_conflicting_merge_is_refused_on_the_page_and_changes_nothing(
    web: Web, api: ApiClient, alice: Person, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "clash", {"notes.txt": "one\n"})
    api.add_repo(repo)
    openai_fake.script(
        "clash page",
        Turn.tool("write_file", "Editing.", path="notes.txt", content="agent\n"),
        Turn.tool("finish", summary="Edits notes.", title="Edit notes"),
    )
    session = api.create("clash", "clash page please")
    done = api.wait_status(session["id"], "finished", "failed")
    assert done["status"] == "finished", api.events(session["id"])
    # Meanwhile someone changes the same line on the base branch.
    (repo / "notes.txt").write_text("person\n")
    git(repo, "-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-qam", "mine")
    base = git(repo, "rev-parse", "main").strip()

    web.allow_console(r"status of 409 \(Conflict\).*/merge")  # the refusal, provoked on purpose
    page = web.page(alice, "/pulls/" + done["pr_url"].rsplit("/", 1)[1], name="alice-clash")
    page.wait_for_selector(".diff-file")
    page.click("#merge")
    page.wait_for_selector("#error:not([hidden])")
    assert "notes.txt" in page.inner_text("#error")  # the message names the conflicting file
    assert page.locator("#state .badge.s-open").count() == 1
    assert git(repo, "rev-parse", "main").strip() == base  # nothing was merged
