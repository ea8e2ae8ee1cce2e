"""Slack over Socket Mode: with SLACK_APP_TOKEN the bot opens a socket to (fake) Slack through
slack-bolt's `AsyncSocketModeHandler`; envelopes it receives take the same path as signed HTTP
requests to `/slack/events`, and each is acknowledged by its envelope id."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.app.test_slack_e2e import ALICE, _blocks_text, _edit_and_finish, _world_with_repo
from tests.factories import git, wait_for
from tests.fakes.llm import ScriptBook
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, TEAM_ID, SlackWorld

pytestmark = pytest.mark.slow


@pytest.fixture
def socket_world(make_slack_world: Any) -> SlackWorld:
    """The bot with an app-level token and no signing secret: Socket Mode only."""
    world = make_slack_world(slack_app_token=APP_TOKEN, slack_signing_secret=None)
    socket_world: SlackWorld = dataclasses.replace(world, socket=True)
    return socket_world


def test_a_mention_over_the_socket_ends_with_the_pr_link_in_its_thread(
    socket_world: SlackWorld, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    _, repo = _world_with_repo(socket_world, tmp_path)
    turns = _edit_and_finish("CONTRIBUTING.md", "Be kind.\n", "Add CONTRIBUTING.md")
    gate = turns[-1].gate = threading.Event()
    openai_fake.script("contributing", *turns)
    socket_world.fake.wait_socket()
    opened = socket_world.fake.of("apps.connections.open")
    assert len(opened) == 1

    mention = socket_world.mention(ALICE, "please add a contributing guide")

    status = wait_for(lambda: socket_world.status_message(mention.ts), 40, "the status message")
    session_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status)).group(1)  # type: ignore[union-attr]
    wait_for(
        lambda: (m := socket_world.status_message(mention.ts)) and m.edits >= 1,
        30,
        "an edit while the session runs",
    )
    gate.set()
    session = wait_for(
        lambda: (
            (s := socket_world.runtime.sessions.get(session_id)).status in ("finished", "failed")
            and s
        ),
        30,
        "the session to end",
    )
    assert session.status == "finished", socket_world.runtime.sessions.events(session_id)
    final = wait_for(
        lambda: (
            (m := socket_world.status_message(mention.ts))
            and session.pr_url
            and session.pr_url in _blocks_text(m)
            and m
        ),
        15,
        "the PR link in the status message",
    )
    assert "Done" in _blocks_text(final)
    statuses = [
        m
        for m in socket_world.fake.bot_replies(socket_world.channel, mention.ts)
        if "Open in Nightshift" in _blocks_text(m)
    ]
    assert len(statuses) == 1
    assert (
        git(repo, "log", "-1", "--format=%an", f"nightshift/{session_id}").strip()
        == "Alice Example"
    )
    assert any(
        c.params.get("timestamp") == mention.ts for c in socket_world.fake.of("reactions.add")
    )


def test_the_slash_command_answers_in_the_socket_acknowledgement(socket_world: SlackWorld) -> None:
    socket_world.fake.wait_socket()
    command = {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "team_domain": "acme",
        "channel_id": socket_world.channel,
        "channel_name": "general",
        "user_id": ALICE,
        "user_name": "alice",
        "command": "/nightshift",
        "text": "help",
        "api_app_id": "ANS000001",
        "trigger_id": "1337.42.abcd",
        "response_url": "https://hooks.slack.com/commands/T/1/x",
    }
    envelope_id = socket_world.fake.socket_send("slash_commands", command)
    ack = socket_world.fake.wait_ack(envelope_id)
    assert ack["payload"]["response_type"] == "ephemeral"
    assert "/nightshift" in json.dumps(ack["payload"])


def test_http_requests_are_refused_without_a_signing_secret(socket_world: SlackWorld) -> None:
    response = httpx.post(f"{socket_world.url}/slack/events", content=b"{}", timeout=10)
    assert response.status_code == 404 and "Socket Mode" in response.json()["detail"]
    # Nothing was recorded: the request never reached the bot.
    assert socket_world.fake.of("chat.postMessage") == []


def test_http_keeps_working_beside_socket_mode(make_slack_world: Any, tmp_path: Path) -> None:
    world = make_slack_world(slack_app_token=APP_TOKEN)  # signing secret set too
    world.fake.wait_socket()
    _world_with_repo(world, tmp_path)
    mention = world.mention(ALICE, "hello there")  # over signed HTTP
    wait_for(
        lambda: any(
            c.params.get("timestamp") == mention.ts for c in world.fake.of("reactions.add")
        ),
        20,
        "the mention to be acknowledged with a reaction",
    )


def test_a_token_that_is_not_an_app_level_token_is_refused() -> None:
    with pytest.raises(ValueError, match=r"SLACK_APP_TOKEN must be an app-level token \(xapp-"):
        Settings(slack_bot_token=BOT_TOKEN, slack_app_token="xoxb-not-an-app-token")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is not"):
        Settings(slack_app_token=APP_TOKEN)  # type: ignore[call-arg]
    settings = Settings(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN)  # type: ignore[call-arg]
    assert settings.slack_enabled and settings.slack_signing_secret is None


def test_the_shipped_manifest_asks_for_what_the_bot_handles() -> None:
    import yaml

    from integrations.slack.bolt import COMMAND, HANDLED_EVENTS

    manifest = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "infra" / "slack-manifest.yml").read_text()
    )
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True and settings["interactivity"]["is_enabled"]
    events = settings["event_subscriptions"]["bot_events"]
    # Every event bolt listens for is subscribed to (`message` arrives as message.<channel kind>).
    assert {e.split(".")[0] for e in events} == set(HANDLED_EVENTS)
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == [COMMAND]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"app_mentions:read", "chat:write", "commands", "reactions:write"} <= scopes
    # Socket Mode needs no request URL anywhere.
    assert "request_url" not in json.dumps(manifest)
