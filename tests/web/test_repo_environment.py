"""The new-session page names the chosen repository's environment and shows its effective
spec with where each value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.schemas import RepoCreate
from tests.factories import Person, make_repo, wait_for
from tests.fakes.registry import missing_tool
from tests.images.oci_fixtures import registry, tool_image
from tests.web.conftest import Web

__all__ = ["registry", "tool_image"]  # fixtures

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


@pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool()))
def test_new_session_page_shows_the_digest_its_image_runs_on(
    web: Web, alice: Person, tool_image: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "imaged", {".nightshift.toml": f'image = "{tool_image}"\n'})
    web.runtime.repos.add(RepoCreate(url=str(repo)))
    web.runtime.images.queue_build(["imaged"])
    image = wait_for(lambda: web.runtime.image_registry.newest("imaged"), 120, "the image build")
    assert image.environment_digest is not None
    page = web.page(alice, "/new?repo=imaged")
    page.wait_for_selector("#environment:not([hidden])")
    shown = page.inner_text("#environment-name")
    assert shown == f"image {tool_image} ({image.environment_digest})"
