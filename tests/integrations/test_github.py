"""The GitHub port against the fake GitHub, through the real githubkit client and real git."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path

import pytest

from integrations.forge.base import ForgeError
from integrations.github import (
    GitHubApp,
    GitHubAuthError,
    GitHubConfig,
    GitHubForge,
    GitHubRateLimited,
    GitHubUnavailable,
    InvalidSignature,
    NotInstalled,
    OAuthClient,
    sign,
    verify_signature,
)
from integrations.github.pulls import comment, create_pull_request, get_pull_request
from tests.factories import git
from tests.fakes.github import FakeGitHub


def _app(fake: FakeGitHub, seen: list[str] | None = None, margin_s: float = 300) -> GitHubApp:
    config = GitHubConfig(api_url=fake.api_url, timeout_s=10, retry_base_s=0.05)
    return GitHubApp(
        config,
        fake.app_id,
        fake.private_key,
        on_token=(seen.append if seen is not None else lambda _t: None),
        margin_s=margin_s,
    )


def _oauth(fake: FakeGitHub) -> OAuthClient:
    return OAuthClient(GitHubConfig(api_url=fake.api_url), fake.client_id, fake.client_secret)


# ---------------------------------------------------------------- installation tokens


def test_installation_token_is_minted_with_a_signed_jwt_scoped_and_cached(
    github_fake: FakeGitHub,
) -> None:
    github_fake.add_repo("octo/proj", installation_id=7)
    github_fake.add_repo("octo/other", installation_id=7)
    seen: list[str] = []
    app = _app(github_fake, seen)
    first = app.token("octo/proj")
    assert first.token.startswith("ghs_") and first.installation_id == 7
    assert seen == [first.token]
    # Cached: the second operation reuses it without asking GitHub again.
    assert app.token("octo/proj") == first and app.minted == 1
    minted = [r for r in github_fake.requests if r.path.endswith("/access_tokens")]
    assert len(minted) == 1 and minted[0].body == {"repositories": ["proj"]}
    # Scoped to the one repository: it cannot push to the other.
    assert github_fake.pushable("octo/proj", first.token)
    assert not github_fake.pushable("octo/other", first.token)


def test_token_close_to_expiry_is_replaced(github_fake: FakeGitHub) -> None:
    github_fake.add_repo("octo/proj")
    github_fake.installation_token_ttl = 200  # shorter than the 300 s margin
    app = _app(github_fake)
    one, two = app.token("octo/proj"), app.token("octo/proj")
    assert one.token != two.token and app.minted == 2


def test_wrong_app_key_is_refused_by_github(github_fake: FakeGitHub, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    github_fake.add_repo("octo/proj")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    app = GitHubApp(GitHubConfig(api_url=github_fake.api_url), github_fake.app_id, pem)
    with pytest.raises(GitHubAuthError, match="refused the credentials"):
        app.token("octo/proj")


def test_bad_private_key_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a PEM private key"):
        GitHubApp(GitHubConfig(), 1, "not a key")


def test_repo_without_installation_says_to_install_the_app(github_fake: FakeGitHub) -> None:
    github_fake.add_repo("octo/lonely", installation_id=None)
    with pytest.raises(NotInstalled, match="not installed on octo/lonely"):
        _app(github_fake).token("octo/lonely")


def test_failures_401_rate_limit_and_5xx(github_fake: FakeGitHub) -> None:
    github_fake.add_repo("octo/proj")
    app = _app(github_fake)
    github_fake.fail_next(401, "/access_tokens")
    with pytest.raises(GitHubAuthError, match="Bad credentials"):
        app.token("octo/proj")
    github_fake.fail_next(403, "/access_tokens", reset_s=3600)
    with pytest.raises(GitHubRateLimited, match="rate limit") as limited:
        app.token("octo/proj")
    assert limited.value.retry_after > 3000
    # One 5xx is retried; three are not. (Short-lived tokens: each call mints.)
    github_fake.installation_token_ttl = 1
    github_fake.fail_next(502, "/access_tokens")
    assert app.token("octo/proj").token.startswith("ghs_")
    github_fake.fail_next(503, "/access_tokens", times=3)
    with pytest.raises(GitHubUnavailable, match="503"):
        app.token("octo/proj")


# ---------------------------------------------------------------- OAuth


def _authorize(fake: FakeGitHub, oauth: OAuthClient, login: str) -> str:
    import httpx

    fake.authorizing = login
    url = oauth.authorize_url("st4te", "http://127.0.0.1:1/auth/github/callback")
    r = httpx.get(url, follow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    location = httpx.URL(r.headers["location"])
    assert location.params["state"] == "st4te"
    return location.params["code"]


def test_oauth_code_exchange_identity_and_rotating_refresh(github_fake: FakeGitHub) -> None:
    github_fake.add_user("octocat", "Mona Octocat", "mona@example.com", user_id=583231)
    oauth = _oauth(github_fake)
    code = _authorize(github_fake, oauth, "octocat")
    tokens = oauth.exchange_code(code, "http://127.0.0.1:1/auth/github/callback")
    assert tokens.access_token.startswith("ghu_") and tokens.refresh_token
    assert tokens.refresh_token.startswith("ghr_") and not tokens.expired()
    who = oauth.identity(tokens.access_token)
    assert (who.login, who.name, who.email, who.id) == (
        "octocat",
        "Mona Octocat",
        "mona@example.com",
        583231,
    )
    # The code is single use.
    with pytest.raises(GitHubAuthError, match="incorrect or expired"):
        oauth.exchange_code(code, "http://127.0.0.1:1/auth/github/callback")
    fresh = oauth.refresh(tokens.refresh_token)
    assert fresh.access_token != tokens.access_token
    assert fresh.refresh_token != tokens.refresh_token
    with pytest.raises(GitHubAuthError, match="refresh token"):
        oauth.refresh(tokens.refresh_token)  # the old one died when it was used
    assert oauth.identity(fresh.access_token).login == "octocat"


def test_private_or_unreadable_email_falls_back_to_noreply(github_fake: FakeGitHub) -> None:
    github_fake.add_user("shy", None, "shy@example.com", user_id=77, private_email=True)
    oauth = _oauth(github_fake)
    tokens = oauth.exchange_code(_authorize(github_fake, oauth, "shy"), "http://x/cb")
    who = oauth.identity(tokens.access_token)
    assert who.email == "77+shy@users.noreply.127.0.0.1" and who.name == "shy"
    github_fake.add_user("closed", "Closed Books", "closed@example.com", user_id=78)
    github_fake.emails_forbidden = True
    tokens = oauth.exchange_code(_authorize(github_fake, oauth, "closed"), "http://x/cb")
    assert oauth.identity(tokens.access_token).email == "78+closed@users.noreply.127.0.0.1"
    assert GitHubConfig().noreply_domain == "users.noreply.github.com"
    assert GitHubConfig(api_url="https://ghe.corp/api/v3").web_url == "https://ghe.corp"


def test_org_membership_is_read_with_the_persons_token(
    github_fake: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    github_fake.add_user(
        "mona", "Mona", "m@example.com", orgs={"Octo-Org": "active", "later": "pending"}
    )
    oauth = _oauth(github_fake)
    token = oauth.exchange_code(_authorize(github_fake, oauth, "mona"), "http://x/cb").access_token
    assert oauth.is_member(token, "octo-org")  # GitHub matches org names case-insensitively
    assert not oauth.is_member(token, "later")  # an invitation is not membership
    assert not oauth.is_member(token, "elsewhere")  # 404
    github_fake.blocked_orgs.add("octo-org")  # the App is not installed there, or may not look
    assert not oauth.is_member(token, "octo-org")
    assert "Members: read-only" in caplog.text
    with pytest.raises(GitHubAuthError):
        oauth.is_member("ghu_" + "x" * 36, "octo-org")  # a dead token is an error, not a "no"
    asked = [r for r in github_fake.requests if r.path.startswith("/user/memberships/orgs/")]
    assert {r.token for r in asked} == {token, "ghu_" + "x" * 36}


def test_authorize_url_points_at_github_for_the_public_api() -> None:
    oauth = OAuthClient(GitHubConfig(), "Iv1.abc", "secret")
    url = oauth.authorize_url("xyz", "https://ns.example/auth/github/callback")
    assert url.startswith("https://github.com/login/oauth/authorize?client_id=Iv1.abc")
    assert "state=xyz" in url


# ---------------------------------------------------------------- pull requests


def test_pull_request_as_user_then_duplicate_head_returns_existing(
    github_fake: FakeGitHub,
) -> None:
    repo = github_fake.add_repo("octo/proj")
    git(repo.path, "branch", "feature", "main")
    github_fake.add_user("octocat", "Mona", "mona@example.com")
    oauth = _oauth(github_fake)
    user = oauth.exchange_code(_authorize(github_fake, oauth, "octocat"), "http://x/cb")
    from integrations.github.client import make_client

    gh = make_client(GitHubConfig(api_url=github_fake.api_url), user.access_token)
    pr, created = create_pull_request(
        gh, "octo/proj", head="feature", base="main", title="Add things", body="Body"
    )
    assert created and pr.number == 1 and pr.state == "open" and pr.author == "octocat"
    assert github_fake.pull("octo/proj", 1).token == user.access_token
    again, created = create_pull_request(
        gh, "octo/proj", head="feature", base="main", title="Add things", body="Body"
    )
    assert not created and again.number == 1 and len(github_fake.pulls) == 1
    github_fake.merge("octo/proj", 1)
    assert get_pull_request(gh, "octo/proj", 1).state == "merged"
    url = comment(gh, "octo/proj", 1, "Thanks!")
    assert url.endswith("#issuecomment-1") and github_fake.comments[0]["body"] == "Thanks!"


# ---------------------------------------------------------------- webhooks


def test_signature_verification() -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    verify_signature("s3cret", body, sign("s3cret", body))
    for header, reason in [
        (None, "missing"),
        ("", "missing"),
        ("sha1=" + "0" * 40, "only sha256"),
        (sign("other", body), "does not match"),
        (sign("s3cret", body + b" "), "does not match"),
    ]:
        with pytest.raises(InvalidSignature, match=reason):
            verify_signature("s3cret", body, header)
    with pytest.raises(InvalidSignature, match="no webhook secret"):
        verify_signature("", body, sign("", body))


# ---------------------------------------------------------------- the forge


def _bundle(work: Path, base: str, branch: str, out: Path) -> Path:
    git(work, "branch", "--force", branch, "HEAD")
    git(work, "bundle", "create", "--quiet", str(out), f"{base}..{branch}")
    return out


def _commit(work: Path, name: str, text: str) -> str:
    (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "-c", "user.name=Mona", "-c", "user.email=mona@example.com", "commit", "-qm", name)
    return git(work, "rev-parse", "HEAD").strip()


def test_forge_clone_push_and_diff_through_git_http_backend(
    github_fake: FakeGitHub, tmp_path: Path
) -> None:
    remote = github_fake.add_repo("octo/proj", files={"README.md": "hello\n"})
    seen: list[str] = []
    forge = GitHubForge(_app(github_fake, seen), tmp_path / "mirrors")

    async def scenario() -> None:
        tip = await forge.tip("octo/proj", "main")
        assert tip == git(remote.path, "rev-parse", "main").strip()
        dest = tmp_path / "image" / "workspace"
        assert await forge.clone("octo/proj", "main", dest) == tip
        assert (dest / "README.md").read_text() == "hello\n"
        # No credential and no host path in what an image holds.
        assert git(dest, "remote", "get-url", "origin").strip() == "nightshift:octo/proj"
        image_bytes = b"".join(p.read_bytes() for p in dest.rglob("*") if p.is_file())
        for token in github_fake.all_tokens():
            assert token.encode() not in image_bytes
        assert git(dest, "branch", "-a").split() == ["*", "main", "remotes/origin/main"]

        # The work a sandbox did, carried out as a bundle and pushed from the host.
        new = _commit(dest, "NOTES.md", "notes\n")
        bundle = _bundle(dest, tip, "nightshift/abc", tmp_path / "one.bundle")
        assert await forge.push_bundle("octo/proj", bundle, "nightshift/abc", None) == new
        assert git(remote.path, "rev-parse", "nightshift/abc").strip() == new
        # A second push must name the tip it replaces.
        newer = _commit(dest, "MORE.md", "more\n")
        bundle = _bundle(dest, tip, "nightshift/abc", tmp_path / "two.bundle")
        with pytest.raises(ForgeError, match="moved on GitHub"):
            await forge.push_bundle("octo/proj", bundle, "nightshift/abc", None)
        assert await forge.push_bundle("octo/proj", bundle, "nightshift/abc", new) == newer
        diff = await forge.diff("octo/proj", "main", newer)
        assert "+notes" in diff and "+more" in diff and "README" not in diff
        # A later image holds the base branch only, never another session's branch.
        later = tmp_path / "image2" / "workspace"
        await forge.clone("octo/proj", "main", later)
        assert "nightshift" not in git(later, "branch", "-a")

        # Pushes carried the installation token; git saw no request without one succeed.
        pushes = [t for r, s, t in github_fake.git_requests if s == "receive-pack" and t]
        assert pushes and all(t.startswith("ghs_") for t in pushes)
        assert set(pushes) <= set(seen)

    asyncio.run(scenario())


def test_push_needs_a_current_installation_token(github_fake: FakeGitHub, tmp_path: Path) -> None:
    remote = github_fake.add_repo("octo/proj")
    app = _app(github_fake)
    forge = GitHubForge(app, tmp_path / "mirrors")
    dest = tmp_path / "ws"
    tip = asyncio.run(forge.clone("octo/proj", "main", dest))
    _commit(dest, "a.txt", "a\n")
    bundle = _bundle(dest, tip, "nightshift/x", tmp_path / "x.bundle")
    # Plain git with a revoked token is refused by the server ...
    stale = app.token("octo/proj")
    github_fake.expire_installation_tokens()
    env = {**GitHubForge.auth_env(github_fake.git_url, stale.token), "GIT_TERMINAL_PROMPT": "0"}
    refused = subprocess.run(
        ["git", "ls-remote", f"{github_fake.git_url}/octo/proj.git"],
        env={**env, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0
    # ... and so is one without any token.
    anonymous = subprocess.run(
        ["git", "ls-remote", f"{github_fake.git_url}/octo/proj.git"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert anonymous.returncode != 0
    # The forge notices the refusal, mints a fresh token once, and the push goes through.
    pushed = asyncio.run(forge.push_bundle("octo/proj", bundle, "nightshift/x", None))
    assert git(remote.path, "rev-parse", "nightshift/x").strip() == pushed
    assert app.minted == 2


def test_concurrent_forge_operations_share_one_mirror(
    github_fake: FakeGitHub, tmp_path: Path
) -> None:
    github_fake.add_repo("octo/proj")
    forge = GitHubForge(_app(github_fake), tmp_path / "mirrors")
    errors: list[BaseException] = []

    def clone(i: int) -> None:
        try:
            asyncio.run(forge.clone("octo/proj", "main", tmp_path / f"c{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=clone, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all((tmp_path / f"c{i}" / "README.md").exists() for i in range(4))


def test_missing_branch_is_a_clear_forge_error(github_fake: FakeGitHub, tmp_path: Path) -> None:
    github_fake.add_repo("octo/proj")
    forge = GitHubForge(_app(github_fake), tmp_path / "mirrors")
    with pytest.raises(ForgeError, match="'nope' does not exist on GitHub"):
        asyncio.run(forge.tip("octo/proj", "nope"))
    with pytest.raises(ForgeError, match="'nope' does not exist on GitHub"):
        asyncio.run(forge.clone("octo/proj", "nope", tmp_path / "d"))
    with pytest.raises(ForgeError, match="not a GitHub repository name"):
        asyncio.run(forge.tip("just-a-name", "main"))


def test_pull_request_opened_as_draft(github_fake: FakeGitHub) -> None:
    """A session whose verify commands still fail opens its PR as a draft."""
    repo = github_fake.add_repo("octo/drafty")
    git(repo.path, "branch", "feature", "main")
    github_fake.add_user("octocat", "Mona", "mona@example.com")
    oauth = _oauth(github_fake)
    user = oauth.exchange_code(_authorize(github_fake, oauth, "octocat"), "http://x/cb")
    from integrations.github.client import make_client

    gh = make_client(GitHubConfig(api_url=github_fake.api_url), user.access_token)
    pr, created = create_pull_request(
        gh, "octo/drafty", head="feature", base="main", title="WIP", body="Body", draft=True
    )
    assert created and github_fake.pull("octo/drafty", pr.number).draft is True
