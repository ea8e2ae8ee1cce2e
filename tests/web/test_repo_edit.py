"""The new-session page's "Change this repository" form: it changes the stored spec through
`PATCH /api/repos/{repo}`, sending only what differs, and a refused change changes nothing;
its "Remove this repository" button removes the repo once confirmed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.schemas import RepoCreate
from tests.factories import Person, make_repo
from tests.web.conftest import Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def open_form(web: Web, alice: Person, tmp_path: Path) -> Any:
    web.runtime.repos.add(
        RepoCreate(url=str(make_repo(tmp_path, "proj")), setup=["make deps"], description="demo")
    )
    page = web.page(alice, "/new?repo=proj")
    page.wait_for_selector("#environment:not([hidden])")
    page.click("#environment summary")
    page.wait_for_function("document.getElementById('edit-base').value === 'main'")
    return page


def test_repo_form_changes_only_the_fields_named(web: Web, alice: Person, tmp_path: Path) -> None:
    page = open_form(web, alice, tmp_path)
    assert page.input_value("#edit-setup") == "make deps"
    assert page.input_value("#edit-description") == "demo"
    page.get_by_label("Set-up commands").fill("make deps\n\nmake build")
    page.get_by_label("Egress hosts").fill("pypi.org")
    with page.expect_request(lambda r: r.method == "PATCH") as sent:
        page.get_by_role("button", name="Save changes").click()
    assert sent.value.post_data_json == {
        "setup": ["make deps", "make build"],
        "egress": ["pypi.org"],
    }
    status = page.locator("#repo-edit-status")
    status.get_by_text("Saved: setup, egress. The image is being built again.").wait_for()
    page.wait_for_function("document.getElementById('effective').textContent.includes('pypi.org')")
    assert page.is_hidden("#repo-edit-error")
    (repo,) = web.runtime.repos.list()
    assert (repo.setup, repo.egress) == (["make deps", "make build"], ["pypi.org"])
    assert (repo.base, repo.description, repo.pool_size) == ("main", "demo", 0)
    assert page.input_value("#edit-setup") == "make deps\nmake build"  # prefilled anew


def test_repo_form_shows_a_refused_change_and_stores_nothing(
    web: Web, alice: Person, tmp_path: Path
) -> None:
    web.allow_console(r"status of 422")  # the refused changes, on purpose
    page = open_form(web, alice, tmp_path)
    alert = page.get_by_role("alert")
    page.get_by_label("Base branch").fill("no-such-branch")
    page.get_by_label("Egress hosts").fill("pypi.org")
    page.get_by_role("button", name="Save changes").click()
    alert.filter(has_text="no-such-branch").wait_for()
    assert "proj: cannot read branch 'no-such-branch'" in alert.inner_text()
    assert page.input_value("#edit-base") == "no-such-branch"  # the form as typed
    assert page.input_value("#edit-egress") == "pypi.org"
    assert page.inner_text("#repo-edit-status") == ""
    page.get_by_label("Base branch").fill("main")
    page.get_by_label("Pool size").fill("99")
    page.get_by_role("button", name="Save changes").click()
    alert.filter(has_text="pool_size").wait_for()
    assert "pool_size: Input should be less than or equal to 50" in alert.inner_text()
    (repo,) = web.runtime.repos.list()
    assert (repo.base, repo.egress, repo.pool_size) == ("main", [], 0)
    assert repo.setup == ["make deps"]


def test_repo_form_says_nothing_changed_without_a_request(
    web: Web, alice: Person, tmp_path: Path
) -> None:
    page = open_form(web, alice, tmp_path)
    patches: list[Any] = []
    page.on("request", lambda r: patches.append(r) if r.method == "PATCH" else None)
    page.get_by_label("Set-up commands").fill("make deps\n")  # a blank line is no command
    page.get_by_label("Base branch").press("Enter")  # submits this form, not the session
    page.locator("#repo-edit-status").get_by_text("Nothing changed.").wait_for()
    assert patches == []
    assert page.url.endswith("/new?repo=proj")


def test_repo_form_removes_the_repository_once_confirmed(
    web: Web, alice: Person, tmp_path: Path
) -> None:
    web.runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path / "more", "other"))))
    page = open_form(web, alice, tmp_path)
    deletes: list[Any] = []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    remove = page.get_by_role("button", name="Remove this repository")
    page.once("dialog", lambda dialog: dialog.dismiss())
    remove.click()
    page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 100))")
    assert deletes == []  # not confirmed: nothing sent
    assert [r.name for r in web.runtime.repos.list()] == ["other", "proj"]

    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    with page.expect_request(lambda r: r.method == "DELETE") as sent:
        remove.click()
    assert sent.value.url.endswith("/api/repos/proj")
    assert asked and asked[0].startswith("Remove proj?")
    page.locator("#notice").get_by_text("Removed proj").wait_for()
    page.wait_for_function("document.getElementById('repo').options.length === 1")
    assert page.input_value("#repo") == "other"
    assert page.evaluate("document.activeElement.id") == "repo"  # where the next step is
    assert [r.name for r in web.runtime.repos.list()] == ["other"]
    assert web.runtime.repos.get("proj", removed=True).removed_at is not None

    # The last one removed: the page offers to add a repository, and focus goes there.
    page.wait_for_function("document.getElementById('edit-description').value === ''")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_request(lambda r: r.method == "DELETE") as sent:
        remove.click()
    assert sent.value.url.endswith("/api/repos/other")
    page.locator("#notice").get_by_text("Removed other").wait_for()
    page.wait_for_selector("#no-repos:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "repo-url"
    assert web.runtime.repos.list() == []
