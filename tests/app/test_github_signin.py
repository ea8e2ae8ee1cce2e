"""Who may sign in with GitHub, against the fake GitHub with the real githubkit client: an
identity links by GitHub user id only (never by login or email), new users only for an allowed
organization's members or allowlisted logins, and linking an existing account is an explicit
act of its signed-in user."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlmodel import Session as DB
from sqlmodel import select

from app.models import GitHubAccount, User
from tests.app.conftest import GitHubEnv
from tests.factories import Person, make_person

MONA_ID = 583231


def _users(gh: GitHubEnv) -> list[User]:
    with DB(gh.runtime.engine) as db:
        return list(db.exec(select(User).order_by(User.id)).all())


def _accounts(gh: GitHubEnv) -> list[GitHubAccount]:
    with DB(gh.runtime.engine) as db:
        return list(db.exec(select(GitHubAccount)).all())


@contextmanager
def _signed_in_with_token(gh: GitHubEnv, person: Person) -> Iterator[httpx.Client]:
    """A browser signed in as `person` through their API token (no GitHub involved)."""
    with gh.browser() as browser:
        assert browser.post("/api/auth/token", json={"token": person.token}).status_code == 200
        yield browser


def _assert_refused(page: httpx.Response, *words: str) -> None:
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    assert "nightshift_session=" not in page.headers.get("set-cookie", "")
    for word in words:
        assert word in page.text, page.text


def test_the_same_login_on_github_does_not_take_over_a_local_user(
    make_github_env: Any,
) -> None:
    gh = make_github_env(github_allowed_users="")
    alice = make_person(gh.runtime, "alice", "Alice Local", "alice@corp.example")
    # Someone else owns the GitHub login `alice`, with a verified address matching hers too.
    gh.fake.add_user("alice", "Not Alice", "alice@corp.example", user_id=999001)
    with gh.browser() as browser:
        page = gh.sign_in(browser, "alice", expect=403)
        _assert_refused(page, "You cannot sign in here", "@alice", "ALLOWED_ORGS")
        assert browser.get("/api/me").status_code == 401
    user = gh.runtime.users.get(alice.user.id)
    assert user is not None and (user.name, user.email) == ("Alice Local", "alice@corp.example")
    assert _accounts(gh) == []
    # Even when GitHub's `alice` may sign in, they get a user of their own, not hers.
    allowed = make_github_env(github_allowed_users="alice")
    local = make_person(allowed.runtime, "alice", "Alice Local", "alice@corp.example")
    with allowed.browser() as browser:
        allowed.sign_in(browser, "alice")
        me = browser.get("/api/me").json()
    assert me["user"]["id"] != local.user.id and me["user"]["login"] == "alice-999001"
    kept = allowed.runtime.users.get(local.user.id)
    assert kept is not None and kept.name == "Alice Local"
    assert allowed.runtime.accounts.account(local.user.id) is None


def test_a_stranger_is_refused_when_no_one_is_allowed(make_github_env: Any) -> None:
    gh = make_github_env(github_allowed_users="", github_allowed_orgs="")
    gh.fake.add_user("stranger", "Some One", "one@example.com", orgs={"octo-org": "active"})
    with gh.browser() as browser:
        page = gh.sign_in(browser, "stranger", expect=403)
    _assert_refused(page, "NIGHTSHIFT_GITHUB_ALLOWED_USERS", "sign in with it and link GitHub")
    assert _users(gh) == [] and _accounts(gh) == []
    # No membership was even asked about: nothing is allowed.
    assert not any("/memberships/" in r.path for r in gh.fake.requests)


def test_allowed_org_members_and_allowlisted_logins_get_users(make_github_env: Any) -> None:
    gh = make_github_env(github_allowed_orgs="Octo-Org, other", github_allowed_users="hubot")
    fake = gh.fake
    fake.add_user("mona", "Mona", "mona@example.com", user_id=MONA_ID, orgs={"octo-org": "active"})
    fake.add_user("hubot", "Hubot", "hubot@example.com", user_id=2)
    fake.add_user("invited", "Invited", "inv@example.com", orgs={"octo-org": "pending"})
    fake.add_user("outsider", "Outsider", "out@example.com", orgs={"elsewhere": "active"})
    fake.add_user("hidden", "Hidden", "hid@example.com", orgs={"other": "active"})
    fake.blocked_orgs.add("other")  # the App is not installed there: GitHub answers 403
    for login in ("mona", "hubot"):
        with gh.browser() as browser:
            gh.sign_in(browser, login)
            assert browser.get("/api/me").json()["user"]["login"] == login
    for login in ("invited", "outsider", "hidden"):
        with gh.browser() as browser:
            _assert_refused(gh.sign_in(browser, login, expect=403), f"@{login}", "operator")
    assert [u.login for u in _users(gh)] == ["mona", "hubot"]
    # Membership was read with the person's own token, as GitHub's API requires.
    asked = [r for r in fake.requests if r.path.startswith("/user/memberships/orgs/")]
    askers = {fake.tokens[r.token].login for r in asked if r.token in fake.tokens}
    assert askers == {"mona", "invited", "outsider", "hidden"}
    assert all(fake.tokens[r.token].kind == "user" for r in asked if r.token)


def test_the_same_github_id_signs_in_to_the_same_user_after_a_rename(
    make_github_env: Any,
) -> None:
    gh = make_github_env(github_allowed_users="mona")
    gh.fake.add_user("mona", "Mona", "mona@example.com", user_id=MONA_ID)
    with gh.browser() as browser:
        gh.sign_in(browser, "mona")
        first = browser.get("/api/me").json()["user"]["id"]
    # GitHub renames the account; the new login is not on the allowlist, the id is linked.
    renamed = gh.fake.users.pop("mona")
    renamed.login = "mona-renamed"
    gh.fake.users["mona-renamed"] = renamed
    with gh.browser() as browser:
        gh.sign_in(browser, "mona-renamed")
        me = browser.get("/api/me").json()
    assert me["user"]["id"] == first and me["user"]["login"] == "mona-renamed"
    assert me["github"]["login"] == "mona-renamed"
    assert len(_users(gh)) == 1 and len(_accounts(gh)) == 1
    # Someone who then registers the freed login `mona` is a stranger, not her.
    gh.fake.add_user("mona", "Impostor", "imp@example.com", user_id=31337)
    with gh.browser() as browser:
        gh.sign_in(browser, "mona")
        assert browser.get("/api/me").json()["user"]["id"] != first


def test_a_signed_in_user_links_github_explicitly(make_github_env: Any) -> None:
    gh = make_github_env(github_allowed_users="", github_allowed_orgs="")
    alice = make_person(gh.runtime, "alice", "Alice Local", "alice@corp.example")
    gh.fake.add_user("alice-gh", "Alice Example", "alice@example.com", user_id=4711)
    # Linking needs a signed-in caller, asking from this site.
    assert httpx.post(f"{gh.url}/auth/github/link", timeout=30).status_code == 401
    with _signed_in_with_token(gh, alice) as browser:
        cookies = dict(browser.cookies)
    with httpx.Client(timeout=30, base_url=gh.url, cookies=cookies) as bare:
        foreign = bare.post("/auth/github/link", headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
    with _signed_in_with_token(gh, alice) as browser:
        before = browser.get("/api/me").json()
        assert before["github"] is None
        assert before["github_login_url"] == f"{gh.url}/auth/github/link"
        done = gh.link(browser, "alice-gh")
        assert done.headers["location"] == "/"
        me = browser.get("/api/me").json()
    assert me["user"]["id"] == alice.user.id and me["user"]["login"] == "alice"
    assert me["github"]["login"] == "alice-gh"
    # From now on GitHub sign-in alone reaches her, though nobody new may sign in.
    with gh.browser() as browser:
        gh.sign_in(browser, "alice-gh")
        assert browser.get("/api/me").json()["user"]["id"] == alice.user.id
    # The GitHub account is hers: another user cannot link it, and nothing changes.
    bob = make_person(gh.runtime, "bob", "Bob", "bob@corp.example")
    with _signed_in_with_token(gh, bob) as browser:
        page = gh.link(browser, "alice-gh", expect=409)
        assert "already linked to another Nightshift user" in page.text
        assert browser.get("/api/me").json()["github"] is None
    # Nor can she link a second GitHub account over the first.
    gh.fake.add_user("alice-alt", "Alice Alt", "alt@example.com", user_id=4712)
    with _signed_in_with_token(gh, alice) as browser:
        page = gh.link(browser, "alice-alt", expect=409)
        assert "already linked to GitHub account @alice-gh" in page.text
    assert [(a.user_id, a.github_id) for a in _accounts(gh)] == [(alice.user.id, 4711)]


def test_a_link_finishes_only_for_the_browser_still_signed_in_as_its_user(
    make_github_env: Any,
) -> None:
    gh = make_github_env(github_allowed_users="")
    alice = make_person(gh.runtime, "alice", "Alice Local", "alice@corp.example")
    gh.fake.add_user("alice-gh", "Alice Example", "alice@example.com", user_id=4711)
    with _signed_in_with_token(gh, alice) as browser:
        gh.fake.authorizing = "alice-gh"
        start = browser.post("/auth/github/link")
        assert browser.post("/auth/logout").status_code == 303
        page = gh.authorize(browser, start, expect=403)
        assert "no longer signed in" in page.text
    assert _accounts(gh) == []


def test_a_slack_user_following_a_link_signs_in_under_the_same_rules(
    make_github_env: Any, slack_fake: Any
) -> None:
    from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, SlackSender

    gh = make_github_env(
        github_allowed_users="",
        github_allowed_orgs="octo-org",
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack_fake.url,
    )
    gh.fake.add_user("stranger", "Stranger", "s@example.com", orgs={"elsewhere": "active"})
    gh.fake.add_user("mona", "Mona", "mona@example.com", orgs={"octo-org": "active"})
    sender = SlackSender(gh.url)
    text = sender.command("UMONA00001", "CGENERAL01", "link", user_name="mona").json()["text"]
    code = text.split("/slack/link/")[1].split("|")[0]
    with gh.browser() as browser:
        refused = gh.sign_in(browser, "stranger", next_=f"/slack/link/{code}", expect=403)
        _assert_refused(refused, "@stranger")
        # The link is not spent by a refusal: the right person can still use it.
        done = gh.sign_in(browser, "mona", next_=f"/slack/link/{code}")
        assert done.headers["location"] == f"/slack/link/{code}"
        page = browser.get(f"/slack/link/{code}")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        assert browser.post(f"/slack/link/{code}", data={"csrf": csrf}).status_code == 200
    linked = gh.runtime.slack.links.user_for("UMONA00001")
    assert linked is not None and linked.login == "mona"
