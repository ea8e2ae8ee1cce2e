"""Adding a repository from the web page: a path outside NIGHTSHIFT_REPO_ROOTS is refused with
the server's message on the page, one inside is added and can be prompted at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import Person, make_repo
from tests.web.conftest import Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_add_repository_form_shows_the_refusal_then_adds_a_shared_path(
    web: Web, alice: Person, tmp_path: Path
) -> None:
    # The test settings share tmp_path (the data dir's parent); its parent is not shared.
    outside = make_repo(tmp_path.parent / f"{tmp_path.name}-outside", "private")
    inside = make_repo(tmp_path / "shared", "team")
    (inside / ".nightshift.toml").write_text('setup = ["npm ci"]\n')  # not committed
    web.allow_console(r"/api/repos|403")  # the refusal, on purpose
    page = web.page(alice, "/new")
    page.wait_for_selector("#no-repos:not([hidden])")
    page.fill("#repo-url", str(outside))
    page.click("#add-repo button[type=submit]")
    page.wait_for_selector("#add-error:not([hidden])")
    shown = page.inner_text("#add-error")
    assert "NIGHTSHIFT_REPO_ROOTS" in shown and "nightshift repos add" in shown
    assert str(tmp_path) in shown  # where a path may lie
    assert page.is_hidden("#compose")
    page.fill("#repo-url", str(inside))
    page.click("#add-repo button[type=submit]")
    page.wait_for_selector("#no-repos", state="hidden")
    assert page.input_value("#repo") == "team"
    # The server's warning about the uncommitted spec file is on the page.
    assert "is not committed on branch 'main'" in page.inner_text("#notice")
