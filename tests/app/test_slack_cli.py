"""`nightshift slack ...` and where the Slack endpoints show up for people (OpenAPI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.factories import make_repo


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["repos", "add", str(make_repo(tmp_path, "web"))])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["tokens", "create", "--name", "Alice", "--email", "alice@example.com"]
    )
    assert result.exit_code == 0, result.output
    return runner


def test_channel_default_set_show_list_unset(cli: CliRunner) -> None:
    result = cli.invoke(app, ["slack", "channel-default", "C0123ABCD", "web"])
    assert result.exit_code == 0 and "now go to web" in result.output
    assert "C0123ABCD: web" in cli.invoke(app, ["slack", "channel-default", "C0123ABCD"]).output
    listing = cli.invoke(app, ["slack", "channel-default"]).output
    assert "C0123ABCD" in listing and "web" in listing and "cli" in listing
    unknown = cli.invoke(app, ["slack", "channel-default", "C0123ABCD", "nope"])
    assert unknown.exit_code == 2 and "unknown repo 'nope'" in unknown.output
    bad = cli.invoke(app, ["slack", "channel-default", "#general", "web"])
    assert bad.exit_code == 2 and "not a Slack channel ID" in bad.output
    assert (
        "default removed"
        in cli.invoke(app, ["slack", "channel-default", "C0123ABCD", "--unset"]).output
    )
    assert "no default" in cli.invoke(app, ["slack", "channel-default", "C0123ABCD"]).output


def test_links_and_keywords(cli: CliRunner) -> None:
    result = cli.invoke(app, ["slack", "link", "UALICE0001", "alice"])
    assert result.exit_code == 0 and "now acts as Alice <alice@example.com>" in result.output
    assert "UALICE0001" in cli.invoke(app, ["slack", "links"]).output
    assert cli.invoke(app, ["slack", "link", "UALICE0001", "nobody"]).exit_code == 2
    assert cli.invoke(app, ["slack", "link", "alice", "alice"]).exit_code == 2
    assert "unlinked" in cli.invoke(app, ["slack", "unlink", "UALICE0001"]).output
    assert "was not linked" in cli.invoke(app, ["slack", "unlink", "UALICE0001"]).output
    result = cli.invoke(app, ["slack", "keywords", "web", "Checkout", "shopping cart"])
    assert result.exit_code == 0 and "web: checkout, shopping cart" in result.output
    assert "checkout, shopping cart" in cli.invoke(app, ["slack", "keywords", "web"]).output
    assert "no keywords" in cli.invoke(app, ["slack", "keywords", "web", "--clear"]).output


def test_the_slack_endpoints_are_in_the_api_docs(make_settings: object) -> None:
    from app.main import create_app

    paths = create_app(make_settings()).openapi()["paths"]  # type: ignore[operator]
    assert "post" in paths["/slack/events"] and "post" in paths["/api/slack/link"]
