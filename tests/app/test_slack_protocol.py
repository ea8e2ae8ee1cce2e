"""Protocol hygiene of `POST /slack/events`: signatures, retries de-duplicated on event_id,
bot messages ignored, nothing lost when the process stops after acknowledging."""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session as DB
from sqlmodel import select

from app.schemas import RepoCreate
from app.slack_tables import SlackEventRecord
from tests.factories import make_person, make_repo, wait_for
from tests.fakes.slack import BOT_ID, BOT_USER_ID, SlackWorld, signature

ALICE = "UALICE0001"


def _setup(world: SlackWorld, tmp_path: Path) -> None:
    world.runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    alice = make_person(world.runtime, "alice", "Alice Example", "alice@example.com")
    world.runtime.slack.links.link(ALICE, alice.user)


def _mention_event(world: SlackWorld, text: str, user: str = ALICE, **extra: Any) -> dict[str, Any]:
    message = world.fake.post_as_person(world.channel, user, f"<@{BOT_USER_ID}> {text}")
    return {
        "type": "app_mention",
        "user": user,
        "text": message.text,
        "ts": message.ts,
        "channel": world.channel,
        "event_ts": message.ts,
        **extra,
    }


def _events(world: SlackWorld) -> list[SlackEventRecord]:
    with DB(world.runtime.engine) as db:
        return list(db.exec(select(SlackEventRecord)).all())


def test_url_verification_answers_the_challenge(slack_world: SlackWorld) -> None:
    body = json.dumps({"token": "x", "challenge": "abc123", "type": "url_verification"}).encode()
    response = slack_world.sender.post(body, "application/json")
    assert response.status_code == 200 and response.json() == {"challenge": "abc123"}


def test_bad_missing_or_stale_signatures_are_refused_with_401(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _setup(slack_world, tmp_path)
    event = _mention_event(slack_world, "do something")
    body = json.dumps(slack_world.sender.envelope(event)).encode()
    sender = slack_world.sender
    assert sender.post(body, "application/json", secret="not-the-secret").status_code == 401
    stale = int(time.time()) - 5 * 60 - 5
    assert sender.post(body, "application/json", timestamp=stale).status_code == 401
    unsigned = httpx.post(
        sender.url, content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert unsigned.status_code == 401
    # A body changed after signing is refused too.
    ts = str(int(time.time()))
    forged = httpx.post(
        sender.url,
        content=body.replace(b"do something", b"do something else"),
        headers={
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature(sender.secret, ts, body),
        },
        timeout=30,
    )
    assert forged.status_code == 401
    time.sleep(0.3)
    assert _events(slack_world) == [] and slack_world.runtime.sessions.query()[1] == 0
    # A correct signature over the same body is accepted.
    assert sender.post(body, "application/json").status_code == 200


def test_the_same_event_delivered_three_times_makes_one_session(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _setup(slack_world, tmp_path)
    event = _mention_event(slack_world, "add a changelog")
    for retry in (None, 1, 2):
        response = slack_world.sender.event(event, event_id="Ev0DUPLICATE1", retry_num=retry)
        assert response.status_code == 200, response.text
    wait_for(lambda: slack_world.status_message(event["ts"]), 40, "the status message")
    time.sleep(0.5)
    assert slack_world.runtime.sessions.query()[1] == 1
    assert [e.event_id for e in _events(slack_world)] == ["Ev0DUPLICATE1"]
    statuses = [
        m
        for m in slack_world.fake.bot_replies(slack_world.channel, event["ts"])
        if "Open in Nightshift" in json.dumps(m.blocks)
    ]
    assert len(statuses) == 1


def test_messages_from_bots_and_from_itself_are_ignored(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _setup(slack_world, tmp_path)
    # Another bot mentions us.
    bot_event = _mention_event(slack_world, "do a thing", user="UOTHERBOT1", bot_id="BOTHER0001")
    assert slack_world.sender.event(bot_event).status_code == 200
    # Our own message, as Slack echoes it on message.channels.
    own = {
        "type": "message",
        "subtype": "bot_message",
        "channel": slack_world.channel,
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "text": f"<@{BOT_USER_ID}> stop",
        "ts": slack_world.fake.next_ts(),
        "thread_ts": bot_event["ts"],
    }
    assert slack_world.sender.event(own).status_code == 200
    own_mention = _mention_event(slack_world, "do a thing", user=BOT_USER_ID)
    assert slack_world.sender.event(own_mention).status_code == 200
    # A person's message outside any session thread is none of our business either.
    plain = {
        "type": "message",
        "channel": slack_world.channel,
        "user": ALICE,
        "text": "lunch?",
        "ts": slack_world.fake.next_ts(),
    }
    assert slack_world.sender.event(plain).status_code == 200
    time.sleep(0.5)
    assert slack_world.runtime.sessions.query()[1] == 0
    assert _events(slack_world) == []
    assert slack_world.fake.of("chat.postMessage") == []


def test_slack_endpoints_say_when_slack_is_not_configured(server: Any) -> None:
    response = httpx.post(
        server.url + "/slack/events", json={"type": "url_verification"}, timeout=30
    )
    assert response.status_code == 503 and "SLACK_BOT_TOKEN" in response.json()["detail"]


def test_an_event_acknowledged_before_a_crash_is_handled_after_restart(
    make_slack_world: Any, tmp_path: Path
) -> None:
    first = make_slack_world()
    _setup(first, tmp_path)
    event = _mention_event(first, "write the docs")
    # A process recorded (and acknowledged) the event, then died before handling it.
    assert first.runtime.slack.directory.record_event(
        "Ev0CRASHED01",
        "T1",
        "app_mention",
        {"event": event, "bot_user_id": BOT_USER_ID},
        owner=f"{socket.gethostname()}-{_dead_pid()}",
    )
    # One that a live process is still handling is left alone.
    assert first.runtime.slack.directory.record_event(
        "Ev0BUSY00001", "T1", "app_mention", {"event": {}, "bot_user_id": BOT_USER_ID}
    )
    first.runtime.close()
    time.sleep(0.05)
    second = make_slack_world()
    wait_for(lambda: second.status_message(event["ts"]), 40, "the status message after restart")
    assert second.runtime.sessions.query()[1] == 1
    wait_for(
        lambda: second.runtime.slack.directory.event("Ev0CRASHED01").state == "done", 30, "done"
    )
    assert second.runtime.slack.directory.event("Ev0BUSY00001").state == "received"


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.postgres
def test_event_ids_are_inserted_or_ignored_on_postgres(postgres_url: str) -> None:
    from app.db import control_engine
    from app.services.slack.data import SlackDirectory
    from app.wiring import init_control_db

    engine = control_engine(postgres_url)
    try:
        init_control_db(engine)
        directory = SlackDirectory(engine)
        assert directory.record_event("Ev1", "T1", "app_mention", {"event": {}})
        assert not directory.record_event("Ev1", "T1", "app_mention", {"event": {}})
        assert directory.claim_event("Ev1") and not directory.claim_event("Ev1")
        assert directory.stranded_events() == []  # this process is alive and handling it
        assert directory.record_event("Ev2", "T1", "app_mention", {}, owner="elsewhere-1")
        assert directory.stranded_events(stale_after=0) == ["Ev1", "Ev2"]
        directory.touch_participant("C1", "1.0", "U1")
        directory.touch_participant("C1", "1.0", "U1")
        assert directory.participants("C1", "1.0") == ["U1"]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_429_from_slack_is_retried_after_retry_after(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _setup(slack_world, tmp_path)
    slack_world.fake.fail_next("chat.postMessage", 429, retry_after="1")
    event = _mention_event(slack_world, "tidy the readme")
    assert slack_world.sender.event(event).status_code == 200
    wait_for(lambda: slack_world.status_message(event["ts"]), 40, "the status message")
    first, second = slack_world.fake.attempts("chat.postMessage")[:2]
    assert first.status == 429 and second.status == 200
    assert second.params["thread_ts"] == event["ts"] and second.at - first.at >= 1.0


@pytest.mark.slow
def test_status_edits_are_at_most_one_a_second_and_end_with_the_final_state(
    make_slack_world: Any, openai_fake: Any, tmp_path: Path
) -> None:
    from dataclasses import replace

    from tests.fakes.llm import Turn

    world = make_slack_world(slack_update_interval=1.0)
    _setup(world, tmp_path)
    openai_fake.script(
        "busy work",
        *[replace(Turn.tool("list_files", path="."), delay=0.5) for _ in range(6)],
        Turn.tool("write_file", path="x.txt", content="x\n"),
        Turn.tool("finish", summary="Busy work done.", title="Busy"),
    )
    event = _mention_event(world, "busy work")
    assert world.sender.event(event).status_code == 200
    status = wait_for(lambda: world.status_message(event["ts"]), 40, "the status message")
    session_id = re.search(r"/sessions/([0-9a-f]{12})", json.dumps(status.blocks)).group(1)  # type: ignore[union-attr]
    wait_for(lambda: world.runtime.sessions.get(session_id).status == "finished", 60, "the end")
    wait_for(lambda: "Pull request #1" in json.dumps(status.blocks), 30, "the final edit")
    calls = [
        c
        for c in world.fake.of("chat.postMessage") + world.fake.of("chat.update")
        if c.params.get("ts") == status.ts
        or (
            c.method == "chat.postMessage"
            and "Open in Nightshift" in json.dumps(c.params.get("blocks"))
        )
    ]
    times = sorted(c.at for c in calls)
    assert len(times) >= 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.95, gaps
    events = len(world.runtime.sessions.events(session_id))
    assert len(times) < events  # many events, few edits


@pytest.mark.slow
def test_a_direct_message_needs_no_mention(slack_world: SlackWorld, tmp_path: Path) -> None:
    _setup(slack_world, tmp_path)
    message = slack_world.fake.post_as_person("DALICE0001", ALICE, "add a code of conduct")
    event = {
        "type": "message",
        "channel": "DALICE0001",
        "channel_type": "im",
        "user": ALICE,
        "text": message.text,
        "ts": message.ts,
        "event_ts": message.ts,
    }
    assert slack_world.sender.event(event).status_code == 200
    status = wait_for(
        lambda: slack_world.status_message(message.ts, channel="DALICE0001"), 40, "the status"
    )
    assert status.thread_ts == message.ts
    rows, total = slack_world.runtime.sessions.query()
    assert total == 1 and rows[0].title == "add a code of conduct"
