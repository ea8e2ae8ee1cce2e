"""The new-session page names the chosen repository's environment and shows its effective
spec with where each value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.schemas import RepoCreate
from tests.factories import Person, make_repo
from tests.web.conftest import Web

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_new_session_page_shows_environment_and_effective_spec(
    web: Web, alice: Person, tmp_path: Path
) -> None:
    host = make_repo(tmp_path, "hosted")
    imaged = make_repo(tmp_path, "imaged")
    web.runtime.repos.add(RepoCreate(url=str(host), egress=["pypi.org"]))
    web.runtime.repos.add(RepoCreate(url=str(imaged), image="127.0.0.1:5000/dev/tools:1"))
    page = web.page(alice, "/new?repo=hosted")
    page.wait_for_selector("#environment:not([hidden])")
    assert page.inner_text("#environment-name").startswith("host")
    page.click("#environment summary")
    rows = page.inner_text("#effective")
    assert "egress" in rows and "pypi.org" in rows and "stored" in rows
    page.select_option("#repo", "imaged")
    page.wait_for_function(
        "document.getElementById('environment-name').textContent.startsWith('image ')"
    )
    assert "127.0.0.1:5000/dev/tools:1" in page.inner_text("#environment-name")
