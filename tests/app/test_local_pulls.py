"""Local pull requests reviewed and merged over the API, on real git repositories: the PR a
session opens is merged (fast-forward or merge commit), refused on a conflict with the base
unchanged, closed, refused to others, and counted by the stats once merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, Person, git, make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from workers.events import Notice

pytestmark = pytest.mark.slow


def _commit_on_main(repo: Path, path: str, content: str) -> str:
    """Someone moves the base branch in the repository's own work tree."""
    (repo / path).write_text(content)
    git(repo, "add", path)
    git(repo, "-c", "user.name=Owner", "-c", "user.email=o@example.com", "commit", "-qm", "base")
    return git(repo, "rev-parse", "main").strip()


def _open_pr(
    api: ApiClient, openai_fake: ScriptBook, repo_name: str, path: str, content: str
) -> dict[str, Any]:
    """A real session writes `path` and finishes; returns its PR as the API shows it."""
    key = f"write {path} in {repo_name}"
    openai_fake.script(
        key,
        Turn.tool("write_file", "Writing.", path=path, content=content),
        Turn.tool("finish", summary=f"Wrote {path}.\n\n<b>bold</b>", title=f"Add {path}"),
    )
    session = api.create(repo_name, f"please {key}")
    done = api.wait_status(session["id"], "finished", "failed")
    assert done["status"] == "finished", api.events(session["id"])
    url = done["pr_url"]
    assert url.endswith(f"/pulls/{url.rsplit('/', 1)[1]}") and "/api/" not in url, url
    pr = api.http.get("/api/pulls/" + url.rsplit("/", 1)[1]).json()
    assert pr["state"] == "open" and pr["session_id"] == session["id"]
    return dict(pr)


@pytest.fixture
def repo(api: ApiClient, tmp_path: Path) -> Path:
    path = make_repo(tmp_path, "proj")
    api.add_repo(path)
    return path


def test_merge_fast_forwards_counts_in_stats_and_deletes_the_branch(
    api: ApiClient, openai_fake: ScriptBook, repo: Path
) -> None:
    pr = _open_pr(api, openai_fake, "proj", "NOTES.md", "hello\n")
    assert pr["author"]["login"] == "alice" and pr["can_merge"] is True
    assert [c["message"].splitlines()[0] for c in pr["commits"]] == ["Add NOTES.md"]
    assert pr["commits"][0]["author_email"] == "alice@example.com"
    diff = api.http.get(f"/api/pulls/{pr['id']}/diff").json()
    assert diff["files"] == [{"path": "NOTES.md", "added": 1, "removed": 0}]
    assert "+hello" in diff["diff"]
    # The page itself is served at the PR's link.
    page = api.http.get(f"/pulls/{pr['id']}")
    assert page.status_code == 200 and "pull.js" in page.text

    assert api.http.get("/api/stats").json()["merged"] == 0
    r = api.http.post(f"/api/pulls/{pr['id']}/merge")
    assert r.status_code == 200, r.text
    merged = r.json()
    assert merged["state"] == "merged" and merged["can_merge"] is False
    assert merged["merged_sha"] == pr["head_sha"]  # a fast-forward: no merge commit
    assert merged["closed_by"]["login"] == "alice"
    assert git(repo, "rev-parse", "main").strip() == pr["head_sha"]
    # The base was checked out and clean: the work tree follows, as `git merge --ff-only`.
    assert (repo / "NOTES.md").read_text() == "hello\n"
    assert git(repo, "status", "--porcelain").strip() == ""
    assert git(repo, "branch", "--list", pr["head"]).strip() == ""
    # The merged PR still shows its commits and diff.
    assert [c["message"].splitlines()[0] for c in merged["commits"]] == ["Add NOTES.md"]
    assert "+hello" in api.http.get(f"/api/pulls/{pr['id']}/diff").json()["diff"]
    session = api.session(pr["session_id"])
    assert session["pr_state"] == "merged"
    assert "pr_state" in [e["type"] for e in api.events(pr["session_id"])]
    assert api.http.get("/api/stats").json()["merged"] == 1
    # A second merge is refused and changes nothing.
    again = api.http.post(f"/api/pulls/{pr['id']}/merge")
    assert again.status_code == 409 and "already merged" in again.json()["detail"]


def test_merge_commit_when_the_base_moved(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    bare = make_repo(tmp_path, "bare", bare=True)
    api.add_repo(bare)
    pr = _open_pr(api, openai_fake, "bare", "feature.txt", "feature\n")
    # The base moves in the bare repository (as a push from elsewhere would).
    work = tmp_path / "bare-work"
    _commit_on_main(work, "other.txt", "other\n")
    git(work, "push", "-q", str(bare), "main")
    base_before = git(bare, "rev-parse", "main").strip()

    r = api.http.post(f"/api/pulls/{pr['id']}/merge")
    assert r.status_code == 200, r.text
    tip = git(bare, "rev-parse", "main").strip()
    assert r.json()["merged_sha"] == tip
    parents = git(bare, "rev-list", "--parents", "-n", "1", tip).split()
    assert parents[1:] == [base_before, pr["head_sha"]]
    assert git(bare, "log", "-1", "--format=%an <%ae>|%s", tip).strip() == (
        f"Alice Example <alice@example.com>|Merge pull request #{pr['number']} from {pr['head']}"
    )
    files = set(git(bare, "ls-tree", "--name-only", tip).split())
    assert {"feature.txt", "other.txt", "README.md"} <= files
    assert api.http.get("/api/stats").json()["merged"] == 1


def test_conflict_is_refused_and_the_base_is_unchanged(
    api: ApiClient, openai_fake: ScriptBook, repo: Path
) -> None:
    pr = _open_pr(api, openai_fake, "proj", "same.txt", "from the agent\n")
    base = _commit_on_main(repo, "same.txt", "from a person\n")
    r = api.http.post(f"/api/pulls/{pr['id']}/merge")
    assert r.status_code == 409
    assert "conflicts" in r.json()["detail"] and "same.txt" in r.json()["detail"]
    assert git(repo, "rev-parse", "main").strip() == base
    assert (repo / "same.txt").read_text() == "from a person\n"
    assert git(repo, "rev-parse", pr["head"]).strip() == pr["head_sha"]
    after = api.http.get(f"/api/pulls/{pr['id']}").json()
    assert after["state"] == "open" and after["can_merge"] is True
    assert api.session(pr["session_id"])["pr_state"] == "open"


def test_dirty_checked_out_base_is_refused_untouched(
    api: ApiClient, openai_fake: ScriptBook, repo: Path
) -> None:
    pr = _open_pr(api, openai_fake, "proj", "new.txt", "new\n")
    (repo / "README.md").write_text("my unsaved edit\n")
    base = git(repo, "rev-parse", "main").strip()
    r = api.http.post(f"/api/pulls/{pr['id']}/merge")
    assert r.status_code == 409 and "uncommitted changes" in r.json()["detail"]
    assert git(repo, "rev-parse", "main").strip() == base
    assert (repo / "README.md").read_text() == "my unsaved edit\n"
    assert not (repo / "new.txt").exists()
    assert api.http.get(f"/api/pulls/{pr['id']}").json()["state"] == "open"


def test_close_deletes_the_branch_and_is_not_a_merge(
    api: ApiClient, openai_fake: ScriptBook, repo: Path
) -> None:
    pr = _open_pr(api, openai_fake, "proj", "drop.txt", "nope\n")
    base = git(repo, "rev-parse", "main").strip()
    r = api.http.post(f"/api/pulls/{pr['id']}/close")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "closed" and r.json()["merged_sha"] is None
    assert git(repo, "rev-parse", "main").strip() == base
    assert git(repo, "branch", "--list", pr["head"]).strip() == ""
    assert api.session(pr["session_id"])["pr_state"] == "closed"
    assert api.http.get("/api/stats").json()["merged"] == 0
    assert api.http.post(f"/api/pulls/{pr['id']}/merge").status_code == 409
    # The closed PR's diff is still readable from its head commit.
    assert "+nope" in api.http.get(f"/api/pulls/{pr['id']}/diff").json()["diff"]


def test_others_may_read_but_not_merge_unless_admin(
    api: ApiClient, openai_fake: ScriptBook, repo: Path, bob: Person, runtime: Any
) -> None:
    pr = _open_pr(api, openai_fake, "proj", "mine.txt", "mine\n")
    base = git(repo, "rev-parse", "main").strip()
    with api.as_(bob) as as_bob:
        seen = as_bob.get(f"/api/pulls/{pr['id']}").json()
        assert seen["can_merge"] is False and seen["title"] == "Add mine.txt"
        for action in ("merge", "close"):
            r = as_bob.post(f"/api/pulls/{pr['id']}/{action}")
            assert r.status_code == 403 and "NIGHTSHIFT_ADMINS" in r.json()["detail"]
    assert git(repo, "rev-parse", "main").strip() == base
    assert git(repo, "rev-parse", pr["head"]).strip() == pr["head_sha"]
    assert api.http.get(f"/api/pulls/{pr['id']}").json()["state"] == "open"
    # Named as an admin, bob may.
    runtime.settings.admins = "Bob"
    carol = make_person(runtime, "carol", "Carol", "carol@example.com")
    with api.as_(bob) as as_bob, api.as_(carol) as as_carol:
        assert as_carol.post(f"/api/pulls/{pr['id']}/merge").status_code == 403
        assert as_bob.get(f"/api/pulls/{pr['id']}").json()["can_merge"] is True
        assert as_bob.post(f"/api/pulls/{pr['id']}/merge").status_code == 200
    assert git(repo, "rev-parse", "main").strip() == pr["head_sha"]


def test_unknown_and_bad_ids(api: ApiClient, server: Any) -> None:
    for path in ("/api/pulls/999", "/api/pulls/999/diff"):
        r = api.http.get(path)
        assert r.status_code == 404 and "999" in r.json()["detail"]
    for action in ("merge", "close"):
        assert api.http.post(f"/api/pulls/999/{action}").status_code == 404
        r = api.http.post(f"/api/pulls/abc/{action}")
        assert r.status_code == 422
    assert api.http.get("/api/pulls/0").status_code == 422
    # Without credentials nothing is read or written.
    import httpx

    with httpx.Client(timeout=30, base_url=server.url) as anonymous:
        assert anonymous.post("/api/pulls/1/merge").status_code == 401
        assert anonymous.get("/api/pulls/1").status_code == 401


def test_cross_site_merge_from_a_signed_in_browser_is_refused(
    api: ApiClient, openai_fake: ScriptBook, repo: Path, alice: Person, runtime: Any, server: Any
) -> None:
    import httpx

    pr = _open_pr(api, openai_fake, "proj", "csrf.txt", "x\n")
    cookie = runtime.web_sessions.create(alice.user)
    with httpx.Client(
        timeout=30, base_url=server.url, cookies={"nightshift_session": cookie}
    ) as browser:
        r = browser.post(f"/api/pulls/{pr['id']}/merge", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert browser.get(f"/api/pulls/{pr['id']}").json()["state"] == "open"
        ok = browser.post(f"/api/pulls/{pr['id']}/merge", headers={"Origin": server.url})
        assert ok.status_code == 200, ok.text


def test_a_follow_up_after_the_merge_opens_a_new_pull_request(
    api: ApiClient, openai_fake: ScriptBook, repo: Path
) -> None:
    pr = _open_pr(api, openai_fake, "proj", "one.txt", "1\n")
    assert api.http.post(f"/api/pulls/{pr['id']}/merge").status_code == 200
    openai_fake.script(
        "follow up two",
        Turn.tool("write_file", "More.", path="two.txt", content="2\n"),
        Turn.tool("finish", summary="Wrote two.txt.", title="Add two.txt"),
    )
    r = api.http.post(f"/api/sessions/{pr['session_id']}/prompts", json={"text": "follow up two"})
    assert r.status_code in (200, 201, 202), r.text
    done = wait_for(
        lambda: (s := api.session(pr["session_id"]))["pr_number"] == pr["number"] + 1 and s,
        what="the follow-up's pull request",
    )
    assert done["pr_state"] == "open"
    second = api.http.get("/api/pulls/" + done["pr_url"].rsplit("/", 1)[1]).json()
    assert second["id"] != pr["id"] and second["head"] == pr["head"]
    assert [c["message"].splitlines()[0] for c in second["commits"]] == ["Add two.txt"]
    assert api.http.get(f"/api/pulls/{pr['id']}").json()["state"] == "merged"
    assert git(repo, "show", f"{pr['head']}:two.txt") == "2\n"


def test_the_sessions_verify_results_are_the_checks(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path, runtime: Any
) -> None:
    spec = 'verify = ["test -f checked.txt && echo verified-ok"]\n'
    api.add_repo(make_repo(tmp_path, "checked", {".nightshift.toml": spec, "README.md": "x\n"}))
    pr = _open_pr(api, openai_fake, "checked", "checked.txt", "yes\n")
    checks = pr["checks"]
    assert checks is not None and checks["passed"] is True, pr
    assert [c["command"] for c in checks["checks"]] == ["test -f checked.txt && echo verified-ok"]
    assert checks["checks"][0]["ok"] is True and "verified-ok" in checks["checks"][0]["output"]
    # They are kept on the PR: a long conversation after the push does not hide them.
    store = runtime.files.get(pr["session_id"])
    for n in range(5001):
        store.append(Notice(message=f"later event {n}"))
    assert api.http.get(f"/api/pulls/{pr['id']}").json()["checks"] == checks


def test_a_pr_whose_verify_failed_is_a_draft_until_marked_ready(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path, bob: Person
) -> None:
    spec = 'verify = ["test -f never-there.txt"]\n'
    path = make_repo(tmp_path, "strict", {".nightshift.toml": spec, "README.md": "x\n"})
    api.add_repo(path)
    pr = _open_pr(api, openai_fake, "strict", "attempt.txt", "yes\n")
    assert pr["draft"] is True and pr["checks"]["passed"] is False
    refused = api.http.post(f"/api/pulls/{pr['id']}/merge")
    assert refused.status_code == 409 and "draft" in refused.json()["detail"]
    assert git(path, "rev-parse", "main").strip() != pr["head_sha"]  # nothing merged
    # Someone else may not mark it ready.
    with api.as_(bob) as other:
        assert other.post(f"/api/pulls/{pr['id']}/ready").status_code == 403
    ready = api.http.post(f"/api/pulls/{pr['id']}/ready")
    assert ready.status_code == 200 and ready.json()["draft"] is False
    merged = api.http.post(f"/api/pulls/{pr['id']}/merge")
    assert merged.status_code == 200 and merged.json()["state"] == "merged"
