"""GitHub on the control plane, against the fake GitHub: sign-in and cookies, tokens at rest
and their refresh, the PR opener, webhooks, the reconciler and the CLI."""

from __future__ import annotations

import html
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session as DB
from sqlmodel import select

from app.models import GitHubAccount, GitHubDelivery, GitHubInstallation, User
from app.schemas import RepoCreate
from app.services.github.app import Reconciled, reconcile_github
from integrations.github import sign
from tests.app.conftest import GitHubEnv
from tests.factories import git, make_person, wait_for
from tests.fakes.github import FakeGitHub
from workers.events import BranchPushed, Notice

# ---------------------------------------------------------------- helpers


def _octocat(fake: FakeGitHub) -> None:
    fake.add_user("octocat", "Mona Octocat", "mona@example.com", user_id=583231)


def _user(gh: GitHubEnv, login: str) -> User:
    user = gh.runtime.users.by_login(login)
    assert user is not None
    return user


def _reconcile(gh: GitHubEnv) -> Reconciled:
    """One pass of the reconciler over the runtime's own services."""
    rt = gh.runtime
    return reconcile_github(rt.github, rt.pull_requests, rt.engine, rt.hub, rt.sessions)


def _push_session(gh: GitHubEnv, user: User, prompt: str = "tidy the README") -> str:
    """A session whose runner pushed a branch: the branch on GitHub and `branch_pushed`."""
    rt = gh.runtime
    rt.sessions.dispatcher = None  # this test plays the runner's part itself
    if "octo/proj" not in gh.fake.repos:
        gh.fake.add_repo("octo/proj")
    if not any(r.name == "octo/proj" for r in rt.repos.list()):
        rt.repos.add(RepoCreate(url="octo/proj"))
    row = rt.sessions.create(user, "octo/proj", prompt)
    bare = gh.fake.repos["octo/proj"].path
    base = git(bare, "rev-parse", "main").strip()
    sha = git(bare, "commit-tree", "main^{tree}", "-p", "main", "-m", prompt).strip()
    git(bare, "update-ref", f"refs/heads/{row.branch}", sha)
    rt.hub.publish(
        row.id,
        BranchPushed(
            branch=row.branch,
            sha=sha,
            base="main",
            base_sha=base,
            title=prompt.capitalize(),
            body="Tidied it.",
            prompt_id=1,
        ),
    )
    return str(row.id)


def _events(gh: GitHubEnv, session_id: str, kind: str) -> list[Any]:
    return [e for e in gh.runtime.sessions.events(session_id) if e.type == kind]


# ---------------------------------------------------------------- sign-in


def test_sign_in_links_the_github_identity_and_sets_a_safe_cookie(gh: GitHubEnv) -> None:
    _octocat(gh.fake)
    with gh.browser() as browser:
        done = gh.sign_in(browser, "octocat", next_="/sessions/abc")
        assert done.headers["location"] == "/sessions/abc"
        cookie = next(c for c in done.headers.get_list("set-cookie") if "nightshift_session=" in c)
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        me = browser.get("/api/me").json()
    assert me["user"]["login"] == "octocat"
    assert me["user"]["name"] == "Mona Octocat" and me["user"]["email"] == "mona@example.com"
    assert me["github"]["login"] == "octocat"
    # Tokens are stored encrypted, and decrypt to what GitHub issued.
    with DB(gh.runtime.engine) as db:
        account = db.exec(select(GitHubAccount)).one()
    issued = gh.fake.issued("user")
    assert account.access_token not in issued and not account.access_token.startswith("ghu_")
    assert gh.runtime.accounts.user_token(account.user_id) == issued[-1]


def test_callback_without_matching_state_changes_nothing(gh: GitHubEnv) -> None:
    _octocat(gh.fake)
    gh.fake.authorizing = "octocat"
    with gh.browser() as browser:
        start = browser.get("/auth/github/login")
        approved = httpx.get(start.headers["location"], timeout=30)
        callback = httpx.URL(approved.headers["location"])
        code = callback.params["code"]
        forged = browser.get("/auth/github/callback", params={"code": code, "state": "forged"})
        assert forged.status_code == 400 and "does not match" in forged.json()["detail"]
    with gh.browser() as stranger:  # no state cookie: a link planted by someone else
        planted = stranger.get(
            "/auth/github/callback", params={"code": code, "state": callback.params["state"]}
        )
        assert planted.status_code == 400 and "missing or expired" in planted.json()["detail"]
    denied = httpx.get(
        f"{gh.url}/auth/github/callback", params={"error": "access_denied"}, timeout=30
    )
    assert denied.status_code == 400
    assert gh.runtime.users.by_login("octocat") is None
    with DB(gh.runtime.engine) as db:
        assert db.exec(select(GitHubAccount)).all() == []


def test_login_refuses_to_redirect_off_site(gh: GitHubEnv) -> None:
    _octocat(gh.fake)
    with gh.browser() as browser:
        done = gh.sign_in(browser, "octocat", next_="//evil.example/steal")
        assert done.headers["location"] == "/"


def test_cookie_writes_must_come_from_this_site_and_logout_revokes(gh: GitHubEnv) -> None:
    _octocat(gh.fake)
    with gh.browser() as browser:
        gh.sign_in(browser, "octocat")
        cookies = dict(browser.cookies)
    with httpx.Client(timeout=30, base_url=gh.url, cookies=cookies) as bare:
        assert bare.get("/api/me").status_code == 200  # reads are fine
        refused = bare.post("/api/tokens", json={"label": "cli"})
        assert refused.status_code == 403 and "cross-site" in refused.json()["detail"]
        evil = bare.post(
            "/api/tokens", json={"label": "cli"}, headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 403
        made = bare.post("/api/tokens", json={"label": "cli"}, headers={"Origin": gh.url})
        assert made.status_code == 201
    token = made.json()["token"]
    # The new API token works without a cookie, and without an Origin header.
    who = httpx.get(f"{gh.url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert who.json()["user"]["login"] == "octocat"
    with httpx.Client(timeout=30, base_url=gh.url, cookies=cookies) as bare:
        assert (
            bare.post("/auth/logout", headers={"Origin": "https://evil.example"}).status_code == 403
        )
        out = bare.post("/auth/logout", headers={"Origin": gh.url})
        assert out.status_code == 303
    with httpx.Client(
        timeout=30, base_url=gh.url, cookies=cookies
    ) as replay:  # the old cookie, kept
        assert replay.get("/api/me").status_code == 401


def test_local_mode_refuses_writes_from_another_site(make_settings: Any, tmp_path: Path) -> None:
    from app.main import create_app
    from app.runtime import build_runtime
    from tests.fakes.server import BackgroundServer

    runtime = build_runtime(make_settings(auth="local"))
    try:
        with BackgroundServer(create_app(runtime=runtime)) as server:
            body = {"url": str(tmp_path / "nonexistent")}  # inside the test's repo roots
            foreign = httpx.post(
                f"{server.url}/api/repos",
                json=body,
                headers={"Origin": "https://evil.example"},
                timeout=30,
            )
            assert foreign.status_code == 403
            # Tools (no Origin) and our own pages still work.
            assert httpx.post(f"{server.url}/api/repos", json=body, timeout=30).status_code == 422
            own = httpx.post(
                f"{server.url}/api/repos", json=body, headers={"Origin": server.url}, timeout=30
            )
            assert own.status_code == 422
    finally:
        runtime.close()


def test_signing_in_again_updates_and_never_duplicates(gh: GitHubEnv) -> None:
    _octocat(gh.fake)
    with gh.browser() as browser:
        gh.sign_in(browser, "octocat")
    gh.fake.users["octocat"].name = "Mona Lisa Octocat"
    with gh.browser() as browser:
        gh.sign_in(browser, "octocat")
    assert _user(gh, "octocat").name == "Mona Lisa Octocat"
    with DB(gh.runtime.engine) as db:
        assert len(db.exec(select(GitHubAccount)).all()) == 1
        assert len(db.exec(select(User)).all()) == 1


def test_sign_in_not_configured_is_a_clear_404(make_github_env: Any) -> None:
    env = make_github_env(github_client_id=None, github_client_secret=None)
    r = httpx.get(f"{env.url}/auth/github/login", timeout=30)
    assert r.status_code == 404 and "GITHUB_CLIENT_ID" in r.json()["detail"]


def test_settings_refuse_incomplete_github_configuration(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="private key"):
        make_settings(github_app_id="1")
    with pytest.raises(ValueError, match="NIGHTSHIFT_SECRET_KEYS is required"):
        make_settings(github_client_id="Iv1.x", github_client_secret="s")
    with pytest.raises(ValueError, match="entry 2 is not a Fernet key"):
        from cryptography.fernet import Fernet

        make_settings(secret_keys=f"{Fernet.generate_key().decode()},hunter2")


# ---------------------------------------------------------------- tokens


def _linked(gh: GitHubEnv) -> int:
    _octocat(gh.fake)
    with gh.browser() as browser:
        gh.sign_in(browser, "octocat")
    user_id = _user(gh, "octocat").id
    assert user_id is not None
    return user_id


def _expire(gh: GitHubEnv, user_id: int) -> None:
    """The person's access token expires (at GitHub and in our records)."""
    gh.fake.expire_user_tokens("octocat")
    with DB(gh.runtime.engine) as db:
        account = db.get(GitHubAccount, user_id)
        assert account is not None
        account.access_expires_at = time.time() - 1
        db.add(account)
        db.commit()


def _check_pair_is_current(gh: GitHubEnv, user_id: int) -> None:
    """The stored refresh token is the one GitHub holds valid now, and the access token works."""
    with DB(gh.runtime.engine) as db:
        account = db.get(GitHubAccount, user_id)
    assert account is not None and account.refresh_token is not None
    cipher = gh.runtime.accounts.cipher
    assert gh.fake.lookup(cipher.decrypt(account.refresh_token)) is not None
    assert gh.fake.lookup(cipher.decrypt(account.access_token)) is not None


def test_expired_token_is_refreshed_once_by_concurrent_callers(gh: GitHubEnv) -> None:
    user_id = _linked(gh)
    _expire(gh, user_id)
    gh.fake.refresh_delay = 0.2
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(gh.runtime.accounts.user_token(user_id)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gh.fake.refreshes == 1
    assert len(set(results)) == 1 and results[0] == gh.fake.issued("user")[-1]
    _check_pair_is_current(gh, user_id)
    # The stored pair is the rotated one: the next refresh works from it.
    _expire(gh, user_id)
    assert gh.runtime.accounts.user_token(user_id) == gh.fake.issued("user")[-1]
    assert gh.fake.refreshes == 2


def test_two_processes_refreshing_at_once_keep_the_pair(gh: GitHubEnv) -> None:
    from app.services.github.accounts import GitHubAccounts

    user_id = _linked(gh)
    mine = gh.runtime.accounts
    # Another API host or worker: same database, its own locks.
    theirs = GitHubAccounts(gh.runtime.engine, mine.oauth, mine.cipher, mine.policy)
    _expire(gh, user_id)
    gh.fake.refresh_delay = 0.5
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def run(name: str, accounts: GitHubAccounts) -> None:
        barrier.wait()
        results[name] = accounts.user_token(user_id) or ""

    threads = [
        threading.Thread(target=run, args=("mine", mine)),
        threading.Thread(target=run, args=("theirs", theirs)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # GitHub let only one of them spend the refresh token; the other took the stored pair.
    assert gh.fake.refreshes == 1
    assert results["mine"] == results["theirs"] == gh.fake.issued("user")[-1]
    _check_pair_is_current(gh, user_id)


def test_dead_refresh_token_means_sign_in_again(gh: GitHubEnv) -> None:
    from app.services.github.accounts import SignInRequired

    user_id = _linked(gh)
    gh.runtime.accounts.peer_wait_s = 0.3
    _expire(gh, user_id)
    for issued in gh.fake.tokens.values():
        issued.revoked = issued.revoked or issued.kind == "refresh"
    with pytest.raises(SignInRequired, match="sign in with GitHub again"):
        gh.runtime.accounts.user_token(user_id)


def test_key_rotation_re_encrypts_every_token(make_github_env: Any, tmp_path: Any) -> None:
    from cryptography.fernet import Fernet
    from typer.testing import CliRunner

    from app.cli import app as cli

    old = Fernet.generate_key().decode()
    env = make_github_env(secret_keys=old)
    user_id = _linked(env)
    token = env.runtime.accounts.user_token(user_id)
    new = Fernet.generate_key().decode()
    settings = env.runtime.settings
    environ = {
        "NIGHTSHIFT_DATA_DIR": str(settings.data_dir),
        "NIGHTSHIFT_SECRET_KEYS": f"{new},{old}",
        "GITHUB_APP_ID": str(settings.github_app_id),
        "GITHUB_APP_PRIVATE_KEY": settings.github_app_private_key.get_secret_value(),
        "GITHUB_CLIENT_ID": settings.github_client_id,
        "GITHUB_CLIENT_SECRET": settings.github_client_secret.get_secret_value(),
        "GITHUB_API_URL": settings.github_api_url,
    }
    result = CliRunner().invoke(cli, ["github", "rotate-keys"], env=environ)
    assert result.exit_code == 0, result.output
    assert "1 account" in result.output
    from app.services.crypto import TokenCipher, Undecryptable

    with DB(env.runtime.engine) as db:
        stored = db.get(GitHubAccount, user_id)
    assert stored is not None
    assert TokenCipher(new).decrypt(stored.access_token) == token  # the old key can go now
    with pytest.raises(Undecryptable):
        TokenCipher(old).decrypt(stored.access_token)
    key = CliRunner().invoke(cli, ["github", "secret-key"])
    assert key.exit_code == 0 and Fernet(key.output.strip().encode())


# ---------------------------------------------------------------- the PR opener


def test_pr_is_opened_with_the_prompting_persons_own_token(gh: GitHubEnv) -> None:
    _linked(gh)
    session_id = _push_session(gh, _user(gh, "octocat"))
    row = gh.runtime.sessions.get(session_id)
    assert row.pr_number == 1 and row.pr_state == "open"
    pull = gh.fake.pull("octo/proj", 1)
    assert pull.author == "octocat" and pull.token == gh.fake.issued("user")[-1]
    assert pull.head == row.branch and pull.title == "Tidy the readme"
    assert f"/sessions/{session_id}" in pull.body and "Requested by" not in pull.body
    # New commits for a follow-up: GitHub answers 422 for the branch, the open PR is kept and
    # the follow-up is summed up on its conversation, by the same person.
    rt = gh.runtime
    rt.hub.publish(
        session_id,
        BranchPushed(
            branch=row.branch,
            sha=row.head_sha or "",
            base="main",
            base_sha="",
            title="Also fix the typo",
            body="Fixed it too.",
            prompt_id=1,
        ),
    )
    assert len(gh.fake.pulls) == 1 and not _events(gh, session_id, "error")
    [note] = gh.fake.comments
    assert note["number"] == 1 and note["token"] == pull.token
    assert "Also fix the typo" in note["body"] and "Fixed it too." in note["body"]


def test_unlinked_person_gets_a_link_to_connect_github_then_the_pr_opens_as_them(
    gh: GitHubEnv,
) -> None:
    _octocat(gh.fake)
    person = make_person(gh.runtime, "mona", "Mona", "mona@corp.example")
    session_id = _push_session(gh, person.user)
    notices = _events(gh, session_id, "notice")
    assert len(notices) == 1 and not _events(gh, session_id, "error")
    assert "Connect your GitHub account" in notices[0].message
    assert notices[0].link == f"{gh.url}/auth/github/link?next=/sessions/{session_id}"
    assert gh.fake.pulls == [] and gh.runtime.sessions.get(session_id).pr_number is None
    # Following the link: a signed-out browser is sent to sign in first.
    page = httpx.get(notices[0].link, timeout=30)
    assert page.status_code == 401 and "/signin?next=" in page.text
    # Signed in (with their API token), they connect GitHub with one press of a button.
    with gh.browser() as browser:
        assert browser.post("/api/auth/token", json={"token": person.token}).status_code == 200
        page = browser.get(notices[0].link)
        assert "Connect GitHub" in page.text and "Mona" in page.text
        action = re.search(r'action="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        gh.fake.authorizing = "octocat"
        start = browser.post(html.unescape(action))
        assert start.status_code == 303
        done = gh.authorize(browser, start, 303)
    assert done.headers["location"] == f"/sessions/{session_id}"
    wait_for(lambda: gh.runtime.sessions.get(session_id).pr_number, 10, "the pending PR")
    assert gh.fake.pull("octo/proj", 1).author == "octocat"


def test_fallback_opens_the_pr_as_the_app_naming_the_person(make_github_env: Any) -> None:
    env = make_github_env(pr_fallback="app")
    alice = make_person(env.runtime, "alice", "Alice Example", "alice@example.com")
    session_id = _push_session(env, alice.user)
    pull = env.fake.pull("octo/proj", 1)
    assert pull.author == "nightshift-test[bot]" and pull.token.startswith("ghs_")
    assert "Requested by @alice" in pull.body
    assert env.runtime.sessions.get(session_id).pr_state == "open"


def test_github_failure_opening_the_pr_is_an_error_then_the_reconciler_retries(
    gh: GitHubEnv,
) -> None:
    _linked(gh)
    gh.fake.fail_next(500, "/pulls", times=3)
    session_id = _push_session(gh, _user(gh, "octocat"))
    errors = _events(gh, session_id, "error")
    assert errors and errors[0].code == "pr_failed" and "500" in errors[0].message
    assert gh.runtime.sessions.get(session_id).pr_number is None
    gh.fake.fail_next(403, "/pulls", times=1)  # rate limited on the first retry
    assert _reconcile(gh).opened == 0
    assert _reconcile(gh).opened == 1
    assert gh.runtime.sessions.get(session_id).pr_number == 1
    assert gh.fake.pull("octo/proj", 1).author == "octocat"
    assert _reconcile(gh).opened == 0


def _bury(gh: GitHubEnv, session_id: str, events: int = 5001) -> None:
    """Many later events of the session (a long conversation) after its push."""
    store = gh.runtime.files.get(session_id)
    for n in range(events):
        store.append(Notice(message=f"later event {n}"))


def test_a_failed_pr_is_retried_however_many_events_came_after_its_push(gh: GitHubEnv) -> None:
    """The push and the failures are kept on the session's row, not looked for among recent
    events: neither the reconciler nor a sign-in loses them behind a long conversation."""
    _linked(gh)
    gh.fake.fail_next(500, "/pulls", times=3)
    session_id = _push_session(gh, _user(gh, "octocat"))
    row = gh.runtime.sessions.get(session_id)
    assert row.pr_number is None and row.pr_failures == 1
    assert row.last_push is not None and row.last_push["sha"] == row.head_sha
    _bury(gh, session_id)
    assert _reconcile(gh).opened == 1
    assert gh.runtime.sessions.get(session_id).pr_number == 1
    assert gh.fake.pull("octo/proj", 1).title == "Tidy the readme"


def test_reconciler_gives_up_on_a_pr_github_keeps_refusing(gh: GitHubEnv) -> None:
    _linked(gh)
    gh.fake.fail_next(403, "/pulls", times=10)
    session_id = _push_session(gh, _user(gh, "octocat"))
    for _ in range(4):
        _reconcile(gh)
    errors = [e for e in _events(gh, session_id, "error") if e.code == "pr_failed"]
    assert len(errors) == 3 and "rate limit" in errors[-1].message


# ---------------------------------------------------------------- repos


def test_adding_a_github_repo_reads_its_default_branch_and_installation(gh: GitHubEnv) -> None:
    gh.fake.add_repo("octo/proj").default_branch = "trunk"
    git(gh.fake.repos["octo/proj"].path, "branch", "trunk", "main")
    gh.fake.add_repo("octo/lonely", installation_id=None)
    alice = make_person(gh.runtime, "alice", "Alice", "alice@example.com")
    with httpx.Client(
        timeout=30, base_url=gh.url, headers={"Authorization": f"Bearer {alice.token}"}
    ) as api:
        added = api.post("/api/repos", json={"url": "https://github.com/octo/proj.git"})
        assert added.status_code == 201, added.text
        assert added.json() | {"created_at": 0} == added.json() | {
            "name": "octo/proj",
            "url": "octo/proj",
            "forge": "github",
            "base": "trunk",
            "created_at": 0,
        }
        lonely = api.post("/api/repos", json={"url": "octo/lonely"})
        assert lonely.status_code == 422 and "not installed on octo/lonely" in lonely.text


# ---------------------------------------------------------------- webhooks


def test_forged_missing_and_sha1_signatures_are_refused_and_change_nothing(
    gh: GitHubEnv,
) -> None:
    _linked(gh)
    session_id = _push_session(gh, _user(gh, "octocat"))
    pull = gh.fake.merge("octo/proj", 1)
    secret = gh.runtime.settings.github_webhook_secret.get_secret_value()
    body, headers = gh.fake.webhook(secret, "pull_request", gh.fake.pull_payload(pull, "closed"))
    before = len(gh.runtime.sessions.events(session_id))
    cases = {
        "forged": {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64},
        "other secret": {**headers, "X-Hub-Signature-256": sign("not-the-secret", body)},
        "missing": {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"},
        "sha1": {
            **{k: v for k, v in headers.items() if k != "X-Hub-Signature-256"},
            "X-Hub-Signature": "sha1=" + "0" * 40,
        },
        "sha1 in the sha256 header": {**headers, "X-Hub-Signature-256": "sha1=" + "0" * 40},
    }
    for name, case in cases.items():
        r = httpx.post(f"{gh.url}/github/webhooks", content=body, headers=case, timeout=30)
        assert r.status_code == 401, (name, r.text)
    tampered = httpx.post(
        f"{gh.url}/github/webhooks", content=body + b" ", headers=headers, timeout=30
    )
    assert tampered.status_code == 401
    with DB(gh.runtime.engine) as db:
        assert db.exec(select(GitHubDelivery)).all() == []
    assert len(gh.runtime.sessions.events(session_id)) == before
    assert gh.runtime.sessions.get(session_id).pr_state == "open"


def test_merged_pr_webhook_sets_pr_state_and_a_redelivery_is_a_no_op(gh: GitHubEnv) -> None:
    _linked(gh)
    session_id = _push_session(gh, _user(gh, "octocat"))
    pull = gh.fake.merge("octo/proj", 1)
    payload = gh.fake.pull_payload(pull, "closed")
    first = gh.deliver("pull_request", payload, delivery="d-123")
    assert first.status_code == 202 and first.json()["outcome"] == "queued"
    wait_for(lambda: gh.runtime.sessions.get(session_id).pr_state == "merged", 10, "merged")
    states = _events(gh, session_id, "pr_state")
    assert [e.state for e in states] == ["merged"]
    again = gh.deliver("pull_request", payload, delivery="d-123")
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    time.sleep(0.3)
    assert len(_events(gh, session_id, "pr_state")) == 1
    with DB(gh.runtime.engine) as db:
        row = db.get(GitHubDelivery, "d-123")
    assert row is not None and row.status == "done" and row.payload == ""


def test_closed_and_reopened_prs_and_a_pr_opened_by_hand(gh: GitHubEnv) -> None:
    alice = make_person(gh.runtime, "alice", "Alice", "alice@example.com")
    session_id = _push_session(gh, alice.user)  # not linked: no PR yet
    branch = gh.runtime.sessions.get(session_id).branch
    # The person opens the PR on GitHub themselves.
    from tests.fakes.github import FakePull

    pull = FakePull(1, "octo/proj", "By hand", "", branch, "main", "", "alice", "x")
    gh.fake.pulls.append(pull)
    assert gh.deliver("pull_request", gh.fake.pull_payload(pull, "opened")).status_code == 202
    wait_for(lambda: gh.runtime.sessions.get(session_id).pr_number == 1, 10, "PR recorded")
    pull.state = "closed"
    gh.deliver("pull_request", gh.fake.pull_payload(pull, "closed"))
    wait_for(lambda: gh.runtime.sessions.get(session_id).pr_state == "closed", 10, "closed")
    pull.state = "open"
    gh.deliver("pull_request", gh.fake.pull_payload(pull, "reopened"))
    wait_for(lambda: gh.runtime.sessions.get(session_id).pr_state == "open", 10, "reopened")


def test_push_to_the_base_branch_calls_the_rebuild_hooks(gh: GitHubEnv) -> None:
    gh.fake.add_repo("octo/proj")
    gh.runtime.repos.add(RepoCreate(url="octo/proj"))
    calls: list[tuple[str, str]] = []
    gh.runtime.image_rebuild_hooks.append(lambda spec, sha: calls.append((spec.name, sha)))
    sha = "a" * 40
    r = gh.deliver("push", gh.fake.push_payload("octo/proj", "refs/heads/feature", sha))
    assert r.status_code == 202
    r = gh.deliver("push", gh.fake.push_payload("octo/proj", "refs/heads/main", sha))
    assert r.status_code == 202
    wait_for(lambda: calls, 10, "the rebuild hook")
    time.sleep(0.2)
    assert calls == [("octo/proj", sha)]


def test_installation_events_keep_installations_current(gh: GitHubEnv) -> None:
    app = gh.runtime.github.app
    gh.fake.add_repo("octo/proj", installation_id=9)
    app.token("octo/proj")
    created = {
        "action": "created",
        "installation": {
            "id": 9,
            "account": {"login": "octo", "type": "Organization"},
            "repository_selection": "selected",
        },
        "repositories": [{"full_name": "octo/proj"}],
    }
    assert gh.deliver("installation", created).status_code == 202

    def row() -> GitHubInstallation | None:
        with DB(gh.runtime.engine) as db:
            return db.get(GitHubInstallation, 9)

    wait_for(lambda: row() is not None, 10, "installation recorded")
    assert row().repositories == ["octo/proj"] and row().account == "octo"  # type: ignore[union-attr]
    gh.deliver(
        "installation_repositories",
        {
            "action": "added",
            "installation": {"id": 9},
            "repository_selection": "selected",
            "repositories_added": [{"full_name": "octo/more"}],
            "repositories_removed": [{"full_name": "octo/proj"}],
        },
    )
    wait_for(lambda: row().repositories == ["octo/more"], 10, "repos updated")  # type: ignore[union-attr]
    minted = app.minted
    app.token("octo/proj")  # the removed repo's cached token was dropped
    assert app.minted == minted + 1
    gh.deliver("installation", {**created, "action": "deleted"})
    wait_for(lambda: row() is None, 10, "installation removed")


def test_bad_deliveries_get_clear_answers(gh: GitHubEnv, make_github_env: Any) -> None:
    secret = gh.runtime.settings.github_webhook_secret.get_secret_value()
    body, headers = gh.fake.webhook(secret, "ping", {"zen": "Design for failure."})
    no_id = {k: v for k, v in headers.items() if k != "X-GitHub-Delivery"}
    assert (
        httpx.post(f"{gh.url}/github/webhooks", content=body, headers=no_id, timeout=30).status_code
        == 400
    )
    junk = b"not json"
    r = httpx.post(
        f"{gh.url}/github/webhooks",
        content=junk,
        headers={**headers, "X-Hub-Signature-256": sign(secret, junk)},
        timeout=30,
    )
    assert r.status_code == 400
    assert (
        httpx.post(
            f"{gh.url}/github/webhooks", content=body, headers=headers, timeout=30
        ).status_code
        == 202
    )
    unset = make_github_env(github_webhook_secret=None)
    r = httpx.post(f"{unset.url}/github/webhooks", content=body, headers=headers, timeout=30)
    assert r.status_code == 503 and "GITHUB_WEBHOOK_SECRET" in r.text


# ---------------------------------------------------------------- reconciler


def test_reconciler_catches_a_missed_merge_and_a_lost_delivery(gh: GitHubEnv) -> None:
    _linked(gh)
    merged = _push_session(gh, _user(gh, "octocat"), "first change")
    lost = _push_session(gh, _user(gh, "octocat"), "second change")
    gh.fake.merge("octo/proj", 1)  # GitHub's delivery never arrived
    # A delivery stored but never processed (the process died after answering GitHub).
    pull = gh.fake.merge("octo/proj", 2)
    with DB(gh.runtime.engine) as db:
        db.add(
            GitHubDelivery(
                id="lost-1",
                event="pull_request",
                action="closed",
                payload=__import__("json").dumps(gh.fake.pull_payload(pull, "closed")),
                received_at=time.time() - 3600,
            )
        )
        db.commit()
    result = _reconcile(gh)
    assert result.deliveries == 1 and result.errors == 0
    assert gh.runtime.sessions.get(merged).pr_state == "merged"
    assert gh.runtime.sessions.get(lost).pr_state == "merged"
    from app.services.stats import compute_stats

    assert compute_stats(gh.runtime.engine).merged == 2
    # Nothing left to do the second time.
    again = _reconcile(gh)
    assert (again.deliveries, again.checked, again.updated) == (0, 0, 0)
    # Handled deliveries are remembered for a month, then forgotten.
    gh.runtime.github.webhooks.process_stale(now=time.time() + 29 * 86400)
    with DB(gh.runtime.engine) as db:
        assert db.get(GitHubDelivery, "lost-1") is not None
    gh.runtime.github.webhooks.process_stale(now=time.time() + 31 * 86400)
    with DB(gh.runtime.engine) as db:
        assert db.get(GitHubDelivery, "lost-1") is None


def test_reconcile_command_catches_a_missed_merge(gh: GitHubEnv) -> None:
    """`nightshift github reconcile` runs the reconciler over a runtime of its own."""
    import json

    from typer.testing import CliRunner

    from app.cli import app as cli

    _linked(gh)
    session_id = _push_session(gh, _user(gh, "octocat"))
    gh.fake.merge("octo/proj", 1)  # GitHub's delivery never arrived
    settings = gh.runtime.settings
    assert settings.secret_keys is not None
    environ = {
        "NIGHTSHIFT_DATA_DIR": str(settings.data_dir),
        "NIGHTSHIFT_SECRET_KEYS": settings.secret_keys.get_secret_value(),
        "GITHUB_APP_ID": str(settings.github_app_id),
        "GITHUB_APP_PRIVATE_KEY": settings.github_app_private_key.get_secret_value(),
        "GITHUB_CLIENT_ID": settings.github_client_id,
        "GITHUB_CLIENT_SECRET": settings.github_client_secret.get_secret_value(),
        "GITHUB_API_URL": settings.github_api_url,
    }
    if settings.database_url:
        environ["NIGHTSHIFT_DATABASE_URL"] = settings.database_url
    result = CliRunner().invoke(cli, ["github", "reconcile"], env=environ)
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output.strip().splitlines()[-1])
    assert (counts["checked"], counts["updated"], counts["errors"]) == (1, 1, 0)
    assert gh.runtime.sessions.get(session_id).pr_state == "merged"


# ---------------------------------------------------------------- on PostgreSQL


@pytest.mark.postgres
def test_on_postgres_refresh_locks_the_row_and_deliveries_are_deduplicated(
    postgres_url: str, make_github_env: Any
) -> None:
    from app.services.github.accounts import GitHubAccounts

    env = make_github_env(database_url=postgres_url)
    assert env.runtime.engine.dialect.name == "postgresql"
    user_id = _linked(env)
    mine = env.runtime.accounts
    theirs = GitHubAccounts(env.runtime.engine, mine.oauth, mine.cipher, mine.policy)
    theirs.peer_wait_s = 0  # the row lock alone must be enough here
    _expire(env, user_id)
    env.fake.refresh_delay = 0.3
    results: list[str] = []
    barrier = threading.Barrier(2)

    def run(accounts: GitHubAccounts) -> None:
        barrier.wait()
        results.append(accounts.user_token(user_id) or "")

    threads = [threading.Thread(target=run, args=(a,)) for a in (mine, theirs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert env.fake.refreshes == 1 and len(set(results)) == 1
    _check_pair_is_current(env, user_id)
    body, headers = env.fake.webhook(
        env.runtime.settings.github_webhook_secret.get_secret_value(),
        "ping",
        {"zen": "Approachable is better."},
    )
    first = httpx.post(f"{env.url}/github/webhooks", content=body, headers=headers, timeout=30)
    again = httpx.post(f"{env.url}/github/webhooks", content=body, headers=headers, timeout=30)
    assert (first.status_code, again.status_code) == (202, 200)
