"""`/nightshift`, the modal, linking identities (JSON, web page with CSRF), and which thread
replies become follow-ups."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.schemas import RepoCreate
from integrations.slack.blocks import MODAL_CALLBACK
from tests.factories import make_person, make_repo, wait_for
from tests.fakes.slack import SlackWorld

pytestmark = pytest.mark.slow

ALICE = "UALICE0001"


def _code(text: str) -> str:
    return re.search(r"/slack/link/([A-Za-z0-9_-]+)\|", text).group(1)  # type: ignore[union-attr]


def _repo(world: SlackWorld, root: Path) -> None:
    world.runtime.repos.add(RepoCreate(url=str(make_repo(root, "proj")), description="Demo"))


def test_link_unlink_and_help_through_the_command_and_the_api(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    sender = slack_world.sender
    help_text = sender.command(ALICE, slack_world.channel, "help").json()["text"]
    assert "/nightshift link" in help_text and "repo:" in help_text
    first = sender.command(ALICE, slack_world.channel, "", user_name="alice").json()
    assert first["response_type"] == "ephemeral" and "First, connect" in first["text"]
    reply = sender.command(ALICE, slack_world.channel, "link", user_name="alice").json()
    code = _code(reply["text"])
    alice = make_person(slack_world.runtime, "alice", "Alice Example", "alice@example.com")
    with httpx.Client(base_url=slack_world.url, timeout=10) as http:
        assert http.post("/api/slack/link", json={"code": code}).status_code == 401
        auth = {"Authorization": f"Bearer {alice.token}"}
        linked = http.post("/api/slack/link", json={"code": code}, headers=auth)
        assert linked.status_code == 200, linked.text
        assert linked.json()["slack_user_id"] == ALICE and linked.json()["user"]["login"] == "alice"
        assert linked.json()["slack_name"] == "alice"
        reused = http.post("/api/slack/link", json={"code": code}, headers=auth)
        assert reused.status_code == 404 and "already used" in reused.json()["detail"]
        assert http.post("/api/slack/link", json={"code": "short"}, headers=auth).status_code == 422
    assert slack_world.runtime.slack.links.user_for(ALICE).login == "alice"
    confirmed = wait_for(
        lambda: [
            c for c in slack_world.fake.of("chat.postMessage") if c.params["channel"] == ALICE
        ],
        30,
        "the confirmation DM",
    )
    assert "alice@example.com" in confirmed[0].params["text"]
    again = sender.command(ALICE, slack_world.channel, "link").json()["text"]
    assert "You're connected as `alice`" in again
    assert "Disconnected" in sender.command(ALICE, slack_world.channel, "unlink").json()["text"]
    assert slack_world.runtime.slack.links.user_for(ALICE) is None


def test_the_link_page_confirms_with_a_csrf_token_when_signed_in(
    make_slack_world: Any,
) -> None:
    world = make_slack_world(auth="local")
    code = _code(world.sender.command(ALICE, world.channel, "link", user_name="al").json()["text"])
    with httpx.Client(base_url=world.url, timeout=10) as browser:
        page = browser.get(f"/slack/link/{code}")
        assert (
            page.status_code == 200
            and "Local Tester" in page.text
            and "al (UALICE0001)" in page.text
        )
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
        assert browser.post(f"/slack/link/{code}", data={}).status_code == 403
        assert browser.post(f"/slack/link/{code}", data={"csrf": "0" * 64}).status_code == 403
        assert world.runtime.slack.links.user_for(ALICE) is None
        done = browser.post(f"/slack/link/{code}", data={"csrf": csrf})
        assert done.status_code == 200 and "Local Tester" in done.text
        assert browser.get(f"/slack/link/{code}").status_code == 410
        assert browser.get("/slack/link/nonsense-code-000000").status_code == 410
    assert world.runtime.slack.links.user_for(ALICE).email == "local.tester@example.com"


def test_the_modal_and_a_prompt_after_the_command_start_sessions_in_a_new_thread(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _repo(slack_world, tmp_path)
    alice = make_person(slack_world.runtime, "alice", "Alice Example", "alice@example.com")
    slack_world.runtime.slack.links.link(ALICE, alice.user)
    assert slack_world.sender.command(ALICE, slack_world.channel, "").status_code == 200
    opened = wait_for(lambda: slack_world.fake.of("views.open"), 30, "views.open")
    view = opened[0].params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert view["callback_id"] == MODAL_CALLBACK and view["private_metadata"] == slack_world.channel
    options = view["blocks"][0]["element"]["options"]
    assert [o["value"] for o in options] == ["proj"]

    blank = slack_world.sender.submit_modal(ALICE, view, "proj", "   ")
    assert blank.json() == {
        "response_action": "errors",
        "errors": {"prompt": "Tell the agent what to do."},
    }
    unknown = slack_world.sender.submit_modal(ALICE, view, "gone", "do it")
    assert "unknown repo" in unknown.json()["errors"]["repo"]
    accepted = slack_world.sender.submit_modal(ALICE, view, "proj", "add a license file")
    assert accepted.status_code == 200 and not accepted.content
    top = wait_for(
        lambda: slack_world.fake.find(slack_world.channel, "asked Nightshift"), 30, "the request"
    )
    assert f"<@{ALICE}>" in top.text and "add a license file" in top.text
    status = wait_for(lambda: slack_world.status_message(top.ts), 30, "the status message")
    assert "picked in /nightshift" in json.dumps(status.blocks)

    # The bot is not in another channel: the command's thread moves to a direct message.
    slack_world.fake.unjoined.add("CPRIVATE01")
    slack_world.sender.command(ALICE, "CPRIVATE01", "add a changelog repo:proj")
    dm = wait_for(lambda: slack_world.fake.find("DALICE0001", "asked Nightshift"), 30, "the DM")
    status = wait_for(
        lambda: slack_world.status_message(dm.ts, channel="DALICE0001"), 30, "DM status"
    )
    assert "named in the message" in json.dumps(status.blocks)
    wait_for(lambda: slack_world.runtime.sessions.query()[1] == 2, 30, "two sessions")


@pytest.mark.parametrize("mode", ["mentions", "thread"])
def test_follow_up_mode_every_reply_versus_mentions_only(
    make_slack_world: Any, tmp_path: Path, mode: str
) -> None:
    world = make_slack_world(slack_follow_ups=mode)
    _repo(world, tmp_path)
    person = make_person(world.runtime, "alice", "Alice Example", "alice@example.com")
    world.runtime.slack.links.link(ALICE, person.user)
    mention = world.mention(ALICE, "first thing")
    status = wait_for(lambda: world.status_message(mention.ts), 30, "status")
    session_id = re.search(r"/sessions/([0-9a-f]{12})", json.dumps(status.blocks)).group(1)  # type: ignore[union-attr]
    world.reply("UCAROL0001", "looks good to me", thread_ts=mention.ts)
    world.reply(ALICE, "also update the readme", thread_ts=mention.ts)
    directory = world.runtime.slack.directory
    wait_for(
        lambda: "UCAROL0001" in directory.participants(world.channel, mention.ts),
        30,
        "the participant",
    )
    if mode == "thread":
        queued = wait_for(lambda: world.says(mention.ts, "queued your follow-up"), 30, "follow-up")
        assert f"<@{ALICE}>" in queued.text
        texts = [p.text for p in world.runtime.sessions.prompts(session_id)]
        assert texts == ["first thing", "also update the readme"]
        # Carol is not linked: she is asked to connect, and her reply waits for that.
        wait_for(lambda: world.says(mention.ts, "<@UCAROL0001> I need to know"), 30, "link ask")
    else:
        time.sleep(0.5)
        assert [p.text for p in world.runtime.sessions.prompts(session_id)] == ["first thing"]
        assert world.says(mention.ts, "queued your follow-up") is None


def test_the_link_can_go_through_github_sign_in(make_github_env: Any, slack_fake: Any) -> None:
    from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, SlackSender

    env = make_github_env(
        slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, slack_api_url=slack_fake.url
    )
    env.fake.add_user("octocat", "Mona Octocat", "mona@example.com", user_id=583231)
    reply = SlackSender(env.url).command(ALICE, "CGENERAL01", "link", user_name="mona").json()
    code = _code(reply["text"])
    assert reply["text"].startswith("To connect") and env.url in reply["text"]
    with env.browser() as browser:
        page = browser.get(f"/slack/link/{code}")
        # Nobody signed in: the one-flow button (tests/app/test_slack_onboarding.py).
        assert f'action="/slack/link/{code}/github"' in page.text
        # Someone already signed in with GitHub just confirms.
        done = env.sign_in(browser, "octocat", next_=f"/slack/link/{code}")
        assert done.headers["location"] == f"/slack/link/{code}"
        page = browser.get(f"/slack/link/{code}")
        assert "Mona Octocat" in page.text and 'name="csrf"' in page.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
        forged = browser.post(
            f"/slack/link/{code}", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403
        assert browser.post(f"/slack/link/{code}", data={"csrf": csrf}).status_code == 200
    assert env.runtime.slack.links.user_for(ALICE).login == "octocat"
