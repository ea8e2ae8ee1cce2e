"""The Slack bot end to end: signed events from a fake Slack, the real slack_sdk client
against the fake Web API, the real executor, bubblewrap sandbox and git, a fake model."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.slack import SlackWorld

pytestmark = pytest.mark.slow

ALICE = "UALICE0001"
BOB = "UBOB000001"


def _blocks_text(message: Any) -> str:
    return json.dumps(message.blocks)


def _edit_and_finish(path: str, content: str, title: str) -> list[Turn]:
    return [
        Turn.tool("write_file", "Writing it.", path=path, content=content),
        Turn.tool("run", command=f"cat {path}"),
        Turn.tool("finish", summary=f"Wrote {path}.", title=title),
    ]


def _world_with_repo(world: SlackWorld, tmp_path: Path) -> tuple[Any, Path]:
    repo = make_repo(tmp_path, "proj")
    from app.schemas import RepoCreate

    world.runtime.repos.add(RepoCreate(url=str(repo), description="The project"))
    alice = make_person(world.runtime, "alice", "Alice Example", "alice@example.com")
    world.runtime.slack.links.link(ALICE, alice.user)
    return alice, repo


def test_mention_ends_with_the_pr_link_in_one_updated_thread_message(
    slack_world: SlackWorld, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    _, repo = _world_with_repo(slack_world, tmp_path)
    turns = _edit_and_finish("CONTRIBUTING.md", "Be kind.\n", "Add CONTRIBUTING.md")
    gate = turns[-1].gate = threading.Event()  # the agent finishes once the test has seen it work
    openai_fake.script("contributing", *turns)
    mention = slack_world.mention(ALICE, "please add a contributing guide")

    status = wait_for(lambda: slack_world.status_message(mention.ts), 40, "the status message")
    # It is a reply in the mention's thread, with a link to the web viewer.
    post = next(
        c
        for c in slack_world.fake.of("chat.postMessage")
        if c.params.get("blocks") and "Open in Nightshift" in json.dumps(c.params["blocks"])
    )
    assert post.params["thread_ts"] == mention.ts
    session_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status)).group(1)  # type: ignore[union-attr]
    assert f"{slack_world.runtime.settings.base_url}/sessions/{session_id}" in _blocks_text(status)

    # While the agent works, the status message is edited to say so.
    wait_for(
        lambda: (m := slack_world.status_message(mention.ts)) and m.edits >= 1,
        30,
        "an edit while the session runs",
    )
    gate.set()
    session = wait_for(
        lambda: (
            (s := slack_world.runtime.sessions.get(session_id)).status in ("finished", "failed")
            and s
        ),
        30,
        "the session to end",
    )
    assert session.status == "finished", slack_world.runtime.sessions.events(session_id)
    final = wait_for(
        lambda: (
            (m := slack_world.status_message(mention.ts))
            and session.pr_url
            and session.pr_url in _blocks_text(m)
            and m
        ),
        15,
        "the PR link in the status message",
    )
    assert "Done" in _blocks_text(final) and "Wrote CONTRIBUTING.md." in _blocks_text(final)
    # One status message, edited as the session moved (never a second one).
    statuses = [
        m
        for m in slack_world.fake.bot_replies(slack_world.channel, mention.ts)
        if "Open in Nightshift" in _blocks_text(m)
    ]
    assert len(statuses) == 1 and final.edits >= 2
    updates = slack_world.fake.of("chat.update")
    assert all(u.params["ts"] == final.ts for u in updates)
    # The session and its commit are Alice's; the prompt came from Slack.
    from tests.factories import git

    assert (
        git(repo, "log", "-1", "--format=%an", f"nightshift/{session_id}").strip()
        == "Alice Example"
    )
    public = slack_world.runtime.sessions.public(slack_world.runtime.sessions.get(session_id))
    assert public.author.login == "alice"
    # The mention was acknowledged with a reaction.
    assert any(
        c.params.get("timestamp") == mention.ts for c in slack_world.fake.of("reactions.add")
    )


def test_thread_reply_mentioning_the_bot_is_a_queued_follow_up(
    slack_world: SlackWorld, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    _, repo = _world_with_repo(slack_world, tmp_path)
    bob = make_person(slack_world.runtime, "bob", "Bob Example", "bob@example.com")
    slack_world.runtime.slack.links.link(BOB, bob.user)
    gate = threading.Event()
    openai_fake.script(
        "first task",
        Turn.tool("write_file", "Starting.", path="one.txt", content="1\n"),
        Turn(text="Still thinking.", gate=gate),
    )
    openai_fake.script("second task", *_edit_and_finish("two.txt", "2\n", "Second"))
    mention = slack_world.mention(ALICE, "first task")
    status = wait_for(lambda: slack_world.status_message(mention.ts), 40, "the status message")
    session_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status)).group(1)  # type: ignore[union-attr]
    wait_for(
        lambda: any(
            e.type == "tool_result" for e in slack_world.runtime.sessions.events(session_id)
        ),
        40,
        "the first tool call",
    )

    slack_world.mention(BOB, "second task", thread_ts=mention.ts)
    queued = wait_for(
        lambda: slack_world.says(mention.ts, "queued your follow-up"), 30, "the queue reply"
    )
    assert f"<@{BOB}>" in queued.text and "next in the queue" in queued.text
    assert queued.thread_ts == mention.ts
    prompts = slack_world.runtime.sessions.prompts(session_id)
    assert [p.state for p in prompts] == ["running", "queued"] and prompts[1].author.login == "bob"
    # No second session was made for the thread.
    _rows, total = slack_world.runtime.sessions.query()
    assert total == 1
    gate.set()
    wait_for(
        lambda: all(p.state == "done" for p in slack_world.runtime.sessions.prompts(session_id)),
        60,
        "both prompts",
    )
    assert git_show(repo, session_id, "two.txt") == "2\n"
    final = wait_for(
        lambda: (
            (m := slack_world.status_message(mention.ts))
            and "Pull request" in _blocks_text(m)
            and m
        ),
        15,
        "the final status",
    )
    assert f"<@{BOB}>" in _blocks_text(final)  # participants are shown


def git_show(repo: Path, session_id: str, path: str) -> str:
    from tests.factories import git

    return git(repo, "show", f"nightshift/{session_id}:{path}")


def test_stop_in_the_thread_and_the_stop_reaction_stop_the_session(
    slack_world: SlackWorld, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    _world_with_repo(slack_world, tmp_path)
    openai_fake.script(
        "slow task", Turn.tool("run", command="sleep 60"), Turn.tool("finish", summary="never")
    )
    mention = slack_world.mention(ALICE, "slow task one")
    status = wait_for(lambda: slack_world.status_message(mention.ts), 40, "the status message")
    session_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status)).group(1)  # type: ignore[union-attr]
    sessions = slack_world.runtime.sessions
    wait_for(
        lambda: any(e.type == "tool_call" and e.name == "run" for e in sessions.events(session_id)),
        40,
        "the sleep",
    )
    slack_world.reply(ALICE, "stop", thread_ts=mention.ts)
    wait_for(lambda: sessions.get(session_id).status == "stopped", 30, "the stop")
    assert slack_world.says(mention.ts, "stopped the session")
    final = wait_for(
        lambda: (
            (m := slack_world.status_message(mention.ts)) and "Stopped" in _blocks_text(m) and m
        ),
        30,
        "the stopped status",
    )
    assert "Open in Nightshift" in _blocks_text(final)

    # The same with a :octagonal_sign: reaction on the status message of another session.
    second = slack_world.mention(ALICE, "slow task two")
    status2 = wait_for(
        lambda: slack_world.status_message(second.ts), 40, "the second status message"
    )
    second_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status2)).group(1)  # type: ignore[union-attr]
    wait_for(
        lambda: any(e.type == "tool_call" and e.name == "run" for e in sessions.events(second_id)),
        40,
        "the second sleep",
    )
    slack_world.react(ALICE, slack_world.channel, status2.ts)
    wait_for(lambda: sessions.get(second_id).status == "stopped", 30, "the reaction stop")
    # A reaction elsewhere, or another emoji, stops nothing.
    assert sessions.get(session_id).status == "stopped"


def test_unlinked_user_gets_a_link_and_the_request_starts_once_linked(
    slack_world: SlackWorld, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    from app.schemas import RepoCreate

    slack_world.runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    carol = make_person(slack_world.runtime, "carol", "Carol Example", "carol@example.com")
    slack_world.fake.add_user("UCAROL0001", "carol", "Carol Example")
    openai_fake.script("docs please", *_edit_and_finish("DOCS.md", "docs\n", "Docs"))
    mention = slack_world.mention("UCAROL0001", "docs please")

    told = wait_for(
        lambda: slack_world.says(mention.ts, "I need to know who you are"), 30, "the thread reply"
    )
    assert told.thread_ts == mention.ts
    dm = wait_for(
        lambda: [
            c
            for c in slack_world.fake.of("chat.postMessage")
            if c.params.get("channel") == "UCAROL0001"
        ],
        10,
        "the DM",
    )
    link = re.search(
        r"<(http[^|>]+/slack/link/[^|>]+)\|", json.dumps(dm[0].params["blocks"])
    ).group(1)  # type: ignore[union-attr]
    path = httpx.URL(link).path
    assert slack_world.runtime.sessions.query()[1] == 0  # nothing started yet

    with httpx.Client(base_url=slack_world.url, timeout=10) as browser:
        page = browser.get(path)
        assert (
            page.status_code == 200 and "Carol Example" in page.text and 'name="token"' in page.text
        )
        wrong = browser.post(path, data={"token": "ns_not-a-real-token-000000000000000000"})
        assert wrong.status_code == 401
        done = browser.post(path, data={"token": carol.token})
        assert done.status_code == 200 and "carol" in done.text
        again = browser.post(path, data={"token": carol.token})
        assert again.status_code == 410  # one use only

    status = wait_for(lambda: slack_world.status_message(mention.ts), 40, "the status message")
    session_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status)).group(1)  # type: ignore[union-attr]
    assert (
        slack_world.runtime.sessions.public(
            slack_world.runtime.sessions.get(session_id)
        ).author.login
        == "carol"
    )
    assert slack_world.runtime.slack.links.user_for("UCAROL0001").login == "carol"
    # The DMs were the link and, once linked, the confirmation; nothing more.
    dms = len(
        [
            c
            for c in slack_world.fake.of("chat.postMessage")
            if c.params.get("channel") == "UCAROL0001"
        ]
    )
    assert dms == 2  # the link, then "you're connected"


def test_a_notice_and_a_later_pr_reach_the_status_message_of_a_finished_session(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    from workers.events import Notice, PrOpened

    _world_with_repo(slack_world, tmp_path)
    mention = slack_world.mention(ALICE, "say hello")
    status = wait_for(lambda: slack_world.status_message(mention.ts), 40, "the status message")
    session_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status)).group(1)  # type: ignore[union-attr]
    sessions = slack_world.runtime.sessions
    wait_for(lambda: sessions.get(session_id).status == "finished", 60, "the end")
    wait_for(lambda: "Done" in _blocks_text(status), 30, "the final edit")
    # As the GitHub opener does when the person has not signed in with GitHub yet:
    slack_world.runtime.hub.publish(
        session_id,
        Notice(message="Sign in with GitHub to open the PR as you", link="http://ns/login"),
    )
    wait_for(lambda: "Sign in with GitHub" in _blocks_text(status), 30, "the notice")
    slack_world.runtime.hub.publish(
        session_id, PrOpened(url="https://github.com/acme/proj/pull/9", number=9)
    )
    wait_for(
        lambda: "<https://github.com/acme/proj/pull/9|Pull request #9>" in _blocks_text(status),
        30,
        "the PR link",
    )
    assert "Sign in with GitHub" not in _blocks_text(status)
    # Where the prompt came from (a GitHub comment on the PR) stays shown beside the PR.
    [prompt] = sessions.prompts(session_id)
    comment = "https://github.com/acme/proj/pull/9#issuecomment-77"
    slack_world.runtime.hub.publish(
        session_id,
        Notice(
            message="Follow-up from GitHub: a comment by @monalisa",
            link=comment,
            prompt_id=prompt.id,
            follow_up=True,
        ),
    )
    wait_for(
        lambda: f"a comment by @monalisa <{comment}|Open>" in _blocks_text(status),
        30,
        "the follow-up's origin",
    )
    assert "Pull request #9" in _blocks_text(status)


def test_a_mention_warms_a_sandbox_that_its_session_then_claims(
    slack_world: SlackWorld, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    alice, _ = _world_with_repo(slack_world, tmp_path)
    openai_fake.script("warm me", *_edit_and_finish("WARM.md", "warm\n", "Warm"))
    with httpx.Client(
        timeout=30, base_url=slack_world.url, headers={"Authorization": f"Bearer {alice.token}"}
    ) as api:
        assert api.get("/api/repos/proj/warm").json()["state"] == "cold"
        mention = slack_world.mention(ALICE, "warm me")
        status = wait_for(lambda: slack_world.status_message(mention.ts), 40, "the status message")
        session_id = re.search(r"/sessions/([0-9a-f]{12})", _blocks_text(status)).group(1)  # type: ignore[union-attr]
        sessions = slack_world.runtime.sessions
        ready = wait_for(
            lambda: [e for e in sessions.events(session_id) if e.type == "sandbox_ready"],
            60,
            "the sandbox",
        )
        # The sandbox Alice's mention reserved (as the web prompt box does) is the one her
        # session started in; nothing else warms a sandbox for her.
        assert ready[0].mode == "warm"
        # Claimed, it is no longer reserved for her.
        assert api.get("/api/repos/proj/warm").json()["state"] == "cold"
        wait_for(lambda: sessions.get(session_id).status == "finished", 60, "the end")
