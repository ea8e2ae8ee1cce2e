"""Slack onboarding in one flow, end to end: an unlinked person mentions the bot, follows the
DM's link through the fake GitHub's OAuth (the real githubkit client behind it), and comes back
signed in, with GitHub and Slack linked, while their waiting request starts as them. Spent,
expired and forged links change nothing."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
from sqlmodel import Session as DB
from sqlmodel import select

from app.models import GitHubAccount, User
from app.slack_tables import SlackLinkCode
from tests.app.conftest import GitHubEnv
from tests.factories import make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, SlackSender, SlackWorld

pytestmark = pytest.mark.slow

CAROL = "UCAROL0001"
MALLORY = "UMALLORY01"


def _world(make_github_env: Any, slack_fake: Any, **overrides: Any) -> tuple[GitHubEnv, SlackWorld]:
    gh = make_github_env(
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack_fake.url,
        slack_update_interval=0.2,
        **overrides,
    )
    return gh, SlackWorld(gh.runtime, gh.url, slack_fake, SlackSender(gh.url))


def _dm_link(world: SlackWorld, slack_user: str) -> str:
    dm = wait_for(
        lambda: [
            c for c in world.fake.of("chat.postMessage") if c.params.get("channel") == slack_user
        ],
        20,
        "the DM",
    )
    url = re.search(r"<(http[^|>]+/slack/link/[^|>]+)\|", json.dumps(dm[0].params["blocks"]))
    assert url is not None
    return httpx.URL(url.group(1)).path


def _users(gh: GitHubEnv) -> list[User]:
    with DB(gh.runtime.engine) as db:
        return list(db.exec(select(User)).all())


def _accounts(gh: GitHubEnv) -> list[GitHubAccount]:
    with DB(gh.runtime.engine) as db:
        return list(db.exec(select(GitHubAccount)).all())


def _follow(browser: httpx.Client, path: str) -> httpx.Response:
    """The person opens the DM's link and presses the one button; redirects are followed
    through the fake GitHub's authorize page and back."""
    page = browser.get(path)
    assert page.status_code == 200 and "Continue with GitHub" in page.text, page.text
    return browser.post(f"{path}/github", follow_redirects=True)


def test_one_flow_signs_in_links_github_and_slack_and_starts_the_waiting_request(
    make_github_env: Any, slack_fake: Any, openai_fake: ScriptBook, tmp_path: Any
) -> None:
    gh, world = _world(make_github_env, slack_fake, github_allowed_users="carol-gh")
    from app.schemas import RepoCreate

    gh.runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    gh.fake.add_user("carol-gh", "Carol Example", "carol@example.com", user_id=4242)
    slack_fake.add_user(CAROL, "carol", "Carol Example")
    openai_fake.script(
        "docs please",
        Turn.tool("write_file", "Writing.", path="DOCS.md", content="docs\n"),
        Turn.tool("finish", summary="Wrote DOCS.md.", title="Docs"),
    )
    mention = world.mention(CAROL, "docs please")
    wait_for(lambda: world.says(mention.ts, "I need to know who you are"), 30, "the thread note")
    path = _dm_link(world, CAROL)
    assert gh.runtime.sessions.query()[1] == 0 and _users(gh) == []

    gh.fake.authorizing = "carol-gh"
    with gh.browser() as browser:
        done = _follow(browser, path)
        assert done.status_code == 200, done.text
        assert "Connected" in done.text and "@carol-gh" in done.text
        # One consent at GitHub, and the browser came back signed in.
        assert any(r.url.path == "/login/oauth/authorize" for r in done.history)
        me = browser.get("/api/me").json()
        assert me["user"]["login"] == "carol-gh" and me["github"]["login"] == "carol-gh"
        # The link is spent: opening it again does nothing.
        assert browser.get(path).status_code == 410
        assert browser.post(f"{path}/github").status_code == 410

    user = gh.runtime.slack.links.user_for(CAROL)
    assert user is not None and user.id == me["user"]["id"]
    assert [(a.user_id, a.github_id) for a in _accounts(gh)] == [(user.id, 4242)]
    # The mention that waited starts now, in her name.
    status = wait_for(lambda: world.status_message(mention.ts), 40, "the status message")
    found = re.search(r"/sessions/([0-9a-f]{12})", json.dumps(status.blocks))
    assert found is not None
    session = gh.runtime.sessions.public(gh.runtime.sessions.get(found.group(1)))
    assert session.author.login == "carol-gh"
    wait_for(
        lambda: gh.runtime.sessions.get(found.group(1)).status in ("finished", "failed"),
        60,
        "the session to end",
    )


def test_spent_expired_and_forged_links_change_nothing(
    make_github_env: Any, slack_fake: Any
) -> None:
    gh, _ = _world(make_github_env, slack_fake, github_allowed_users="carol-gh,mallory")
    gh.fake.add_user("carol-gh", "Carol Example", "carol@example.com", user_id=4242)
    gh.fake.add_user("mallory", "Mallory", "m@example.com", user_id=666)
    links = gh.runtime.slack.links
    code = links.create_link_code(CAROL, "T1", "Carol")

    # Two browsers start the flow with the same code; only the first to return gets it.
    with gh.browser() as first, gh.browser() as second:
        start_first = first.post(f"/slack/link/{code}/github")
        start_second = second.post(f"/slack/link/{code}/github")
        assert start_first.status_code == start_second.status_code == 303
        gh.fake.authorizing = "carol-gh"
        gh.authorize(first, start_first, 200)
        gh.fake.authorizing = "mallory"
        late = gh.authorize(second, start_second, 410)
        assert "already used" in late.text
        assert "nightshift_session=" not in late.headers.get("set-cookie", "")
        assert second.get("/api/me").status_code == 401
    assert links.user_for(CAROL).login == "carol-gh"  # type: ignore[union-attr]
    assert {u.login for u in _users(gh)} == {"carol-gh"}

    # A code that expires while the person is at GitHub is refused on return.
    brief = links.create_link_code(MALLORY, "T1", "Mallory", ttl=1.0)
    with gh.browser() as browser:
        start = browser.post(f"/slack/link/{brief}/github")
        assert start.status_code == 303
        time.sleep(1.2)
        gh.fake.authorizing = "mallory"
        assert "expired" in gh.authorize(browser, start, 410).text
        assert browser.get(f"/slack/link/{brief}").status_code == 410
    assert links.user_for(MALLORY) is None and len(_users(gh)) == 1

    # A forged or foreign state: the query alone is never trusted.
    fresh = links.create_link_code(MALLORY, "T1", "Mallory")
    with gh.browser() as browser:
        start = browser.post(f"/slack/link/{fresh}/github")
        gh.fake.authorizing = "mallory"
        approved = httpx.get(start.headers["location"], timeout=30)
        callback = httpx.URL(approved.headers["location"])
        forged_state = callback.copy_set_param("state", "forged")
        assert browser.get(str(forged_state)).status_code == 400
        # The callback taken to another browser (without the sealed state) does nothing.
        with gh.browser() as other:
            assert other.get(str(callback)).status_code == 400
            other.cookies.set("nightshift_oauth", "not-sealed-by-us", path="/auth/github")
            assert other.get(str(callback)).status_code == 400
    assert links.user_for(MALLORY) is None and len(_users(gh)) == 1
    with DB(gh.runtime.engine) as db:
        row = db.exec(select(SlackLinkCode).where(SlackLinkCode.slack_user_id == MALLORY)).all()
    assert [r.used_at for r in row if r.expires_at > time.time()] == [None]

    # Another site cannot start the flow in a visitor's browser.
    with httpx.Client(timeout=30, base_url=gh.url) as bare:
        foreign = bare.post(
            f"/slack/link/{fresh}/github", headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403 and "nightshift_oauth" not in foreign.headers.get(
            "set-cookie", ""
        )
        assert bare.post(f"/slack/link/{fresh}/github").status_code == 403


def test_a_signed_in_person_links_github_to_their_account_and_a_refusal_spends_nothing(
    make_github_env: Any, slack_fake: Any
) -> None:
    from tests.factories import make_person

    gh, _ = _world(make_github_env, slack_fake, github_allowed_users="", github_allowed_orgs="")
    dana = make_person(gh.runtime, "dana", "Dana Local", "dana@corp.example")
    gh.fake.add_user("dana-gh", "Dana Example", "dana@example.com", user_id=5150)
    gh.fake.add_user("stranger", "Stranger", "s@example.com", user_id=5151)
    links = gh.runtime.slack.links
    code = links.create_link_code("UDANA00001", "T1", "Dana")
    path = f"/slack/link/{code}"
    # Nobody may get a new user here: a stranger is refused and the link stays usable.
    gh.fake.authorizing = "stranger"
    with gh.browser() as browser:
        refused = _follow(browser, path)
        assert refused.status_code == 403 and "@stranger" in refused.text
    assert links.user_for("UDANA00001") is None and links.code(code).used_at is None
    # Dana, signed in with her API token, links GitHub to her own account in the same flow.
    gh.fake.authorizing = "dana-gh"
    with gh.browser() as browser:
        assert browser.post("/api/auth/token", json={"token": dana.token}).status_code == 200
        page = browser.get(path)
        assert "Dana Local" in page.text and "Continue with GitHub" in page.text
        done = browser.post(f"{path}/github", follow_redirects=True)
        assert done.status_code == 200 and "@dana-gh" in done.text, done.text
        assert browser.get("/api/me").json()["user"]["id"] == dana.user.id
    linked = links.user_for("UDANA00001")
    assert linked is not None and linked.id == dana.user.id
    assert [(a.user_id, a.github_id) for a in _accounts(gh)] == [(dana.user.id, 5150)]
