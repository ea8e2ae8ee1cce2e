"""`model:NAME` in a Slack mention picks the session's model, through signed events from the
fake Slack, the real slack_sdk client, the real executor and the fake model providers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.factories import make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.slack import SlackWorld

pytestmark = pytest.mark.slow

ALICE = "UALICE0001"


@pytest.fixture
def world(make_slack_world: Any, anthropic_fake: ScriptBook, tmp_path: Path) -> SlackWorld:
    world: SlackWorld = make_slack_world(
        models="openai:fake-model,anthropic:fake-claude",
        anthropic_base_url=anthropic_fake.url,  # type: ignore[attr-defined]
        anthropic_api_key="sk-ant-test-fake-key-0123456789",
    )
    from app.schemas import RepoCreate

    world.runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj")), description="P"))
    alice = make_person(world.runtime, "alice", "Alice Example", "alice@example.com")
    world.runtime.slack.links.link(ALICE, alice.user)
    return world


def test_model_in_a_mention_picks_the_model_and_leaves_the_prompt(
    world: SlackWorld, openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    anthropic_fake.script("look around", Turn.tool("finish", summary="Looked."))
    mention = world.mention(ALICE, "please look around model:anthropic:fake-claude the code")
    status = wait_for(lambda: world.status_message(mention.ts), 40, "the status message")
    found = re.search(r"/sessions/([0-9a-f]{12})", str(status.blocks))
    assert found is not None
    session_id = found.group(1)
    session = world.runtime.sessions.get(session_id)
    assert session.model == "anthropic:fake-claude"
    assert session.title == "please look around the code"
    wait_for(lambda: world.runtime.sessions.get(session_id).status == "finished", 30, "the session")
    assert [b["model"] for b in anthropic_fake.requests] == ["fake-claude"]
    prompt = anthropic_fake.requests[0]["messages"][0]["content"][0]["text"]
    assert prompt.startswith("please look around the code") and "model:" not in prompt
    assert openai_fake.requests == []


def test_an_unknown_model_gets_the_choices_in_the_thread_and_no_session(
    world: SlackWorld, openai_fake: ScriptBook
) -> None:
    mention = world.mention(ALICE, "model:gpt-9 fix the login test")
    reply = wait_for(lambda: world.says(mention.ts, "choose one of"), 30, "the refusal")
    assert "unknown model 'gpt-9'" in reply.text
    assert "openai:fake-model, anthropic:fake-claude" in reply.text
    assert world.runtime.sessions.query()[1] == 0
    assert openai_fake.requests == []


def test_the_slash_command_takes_a_model_too(world: SlackWorld, anthropic_fake: ScriptBook) -> None:
    anthropic_fake.script("add a changelog", Turn.tool("finish", summary="Added."))
    refused = world.sender.command(ALICE, world.channel, "model:openai:x add a changelog")
    assert refused.status_code == 200
    ephemeral = wait_for(
        lambda: [
            c for c in world.fake.of("chat.postEphemeral") if "choose one of" in c.params["text"]
        ],
        30,
        "the refusal",
    )
    assert "unknown model 'openai:x'" in ephemeral[0].params["text"]
    assert world.runtime.sessions.query()[1] == 0
    world.sender.command(ALICE, world.channel, "add a changelog model:anthropic:fake-claude")
    rows = wait_for(lambda: world.runtime.sessions.query()[0], 30, "the session")
    assert rows[0].model == "anthropic:fake-claude" and rows[0].title == "add a changelog"
    wait_for(lambda: anthropic_fake.requests, 30, "the model request")
    assert anthropic_fake.requests[0]["model"] == "fake-claude"
