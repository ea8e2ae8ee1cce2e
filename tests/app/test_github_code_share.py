"""The agent's share of the code in lines, and follow-ups per PR, against the fake GitHub: push
webhooks to the base branch are measured commit by commit (`GET .../commits/{sha}`), and the
commits sessions made or the merge commits of their PRs are the agent's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session as DB
from sqlmodel import select

from app.github_tables import GitHubBaseCommit
from app.models import User
from app.services.github.code_share import CodeShare
from tests.app.conftest import GitHubEnv
from tests.app.test_github_triggers import REPO, _deliver, _env, _sign_in
from tests.factories import git, wait_for
from workers.events import BranchPushed, CommitCreated


@pytest.fixture
def env(make_github_env: Any) -> GitHubEnv:
    return _env(make_github_env)


def _commit(bare: Path, parents: list[str], files: dict[str, str], message: str) -> str:
    """A commit on top of `parents[0]`'s tree with `files` written, made in the bare repo."""
    index = bare / "scratch-index"
    environ = {**os.environ, "GIT_INDEX_FILE": str(index)}

    def run(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", "-C", str(bare), *args],
            check=True,
            capture_output=True,
            text=True,
            input=stdin,
            env=environ,
        ).stdout.strip()

    run("read-tree", parents[0])
    for path, content in files.items():
        blob = run("hash-object", "-w", "--stdin", stdin=content)
        run("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
    tree = run("write-tree")
    index.unlink()
    flags = [arg for parent in parents for arg in ("-p", parent)]
    return run("-c", "user.name=Someone", "-c", "user.email=s@example.com",
               "commit-tree", tree, *flags, "-m", message)  # fmt: skip


def _tip(env: GitHubEnv, branch: str = "main") -> str:
    return git(env.fake.repos[REPO].path, "rev-parse", f"refs/heads/{branch}").strip()


def _land(env: GitHubEnv, branch: str, sha: str) -> None:
    """Move `branch` to `sha` and deliver GitHub's push webhook for it."""
    bare = env.fake.repos[REPO].path
    before = _tip(env, branch)
    git(bare, "update-ref", f"refs/heads/{branch}", sha)
    payload = env.fake.push_payload(REPO, f"refs/heads/{branch}", sha, before=before)
    assert _deliver(env, "push", payload).status == "done"


def _agent_work(env: GitHubEnv, author: User, files: dict[str, str]) -> tuple[str, str, int]:
    """A session whose agent committed `files` and pushed: (session id, commit, PR number)."""
    session = env.runtime.sessions.create(author, REPO, "add " + ", ".join(files))
    bare = env.fake.repos[REPO].path
    base = _tip(env)
    sha = _commit(bare, [base], files, "Add " + ", ".join(files))
    git(bare, "update-ref", f"refs/heads/{session.branch}", sha)
    env.runtime.hub.publish(
        session.id, CommitCreated(sha=sha, author="Mona Octocat", message="Add", prompt_id=1)
    )
    env.runtime.hub.publish(
        session.id,
        BranchPushed(
            branch=session.branch, sha=sha, base="main", base_sha=base, title="Add", prompt_id=1
        ),
    )
    number = wait_for(lambda: env.runtime.sessions.get(session.id).pr_number, 10, "PR opened")
    return session.id, sha, number


def _stats(env: GitHubEnv) -> dict[str, Any]:
    with env.browser() as browser:
        env.sign_in(browser, "octocat")
        answer = browser.get("/api/stats")
    assert answer.status_code == 200, answer.text
    prs: dict[str, Any] = answer.json()["pull_requests"]
    return prs


def test_the_agents_line_share_counts_its_commits_and_its_prs_squash_merges(
    env: GitHubEnv,
) -> None:
    author = _sign_in(env, "octocat")
    bare = env.fake.repos[REPO].path

    # 1. A person pushes 5 lines straight to main.
    _land(env, "main", _commit(bare, [_tip(env)], {"human.txt": "1\n2\n3\n4\n5\n"}, "By hand"))

    # 2. A session's PR adding 4 lines is squash-merged: the merge commit is new, and its push
    #    arrives before the PR's `closed` webhook.
    first, _sha, number = _agent_work(env, author, {"agent.txt": "a\nb\nc\nd\n"})
    env.runtime.sessions.add_prompt(author, first, "also mention it in the README", "web")
    env.runtime.sessions.add_prompt(author, first, "and in the changelog", "web")
    pull, before = env.fake.squash_merge(REPO, number)
    assert pull.merge_commit_sha is not None
    payload = env.fake.push_payload(REPO, "refs/heads/main", pull.merge_commit_sha, before=before)
    assert _deliver(env, "push", payload).status == "done"
    assert _deliver(env, "pull_request", env.fake.pull_payload(pull, "closed")).status == "done"

    # 3. Another session's commit (3 lines) lands unchanged under a merge commit (0 lines).
    _second, agent_sha, _n = _agent_work(env, author, {"two.txt": "x\ny\nz\n"})
    tip = _tip(env)
    _land(env, "main", _commit(bare, [tip, agent_sha], {"two.txt": "x\ny\nz\n"}, "Merge"))

    # 4. Lines pushed to another branch are not the base's.
    _land(env, "main", _tip(env))  # an empty push: nothing to measure
    git(bare, "update-ref", "refs/heads/feature", _tip(env))
    _land(env, "feature", _commit(bare, [_tip(env)], {"f.txt": "1\n2\n"}, "Feature"))

    # By hand: all lines added to main = 5 + 4 + 3 + 0 = 12; the agent's = 4 + 3 = 7.
    stats = _stats(env)
    assert stats["base_lines_added"] == 12
    assert stats["agent_lines_added"] == 7
    assert stats["agent_line_share"] == round(7 / 12, 4)
    assert stats["unmeasured_commits"] == 0
    # Follow-ups after the PR opened: 2 on the first session, 0 on the second.
    assert stats["follow_ups_per_pr"] == 1.0
    assert stats["prs"] == 2
    # Per repository: the same figures, since both sessions are this repository's.
    from app.services.github.pr_stats import compute_pr_stats_by_repo

    [repo] = compute_pr_stats_by_repo(env.runtime.engine)
    assert repo.prs == 2 and repo.agent_lines_added == 7 and repo.base_lines_added == 12
    assert repo.agent_line_share == round(7 / 12, 4)

    # A redelivered push asks GitHub nothing again and counts nothing twice.
    asked = sum(1 for r in env.fake.requests if "/commits/" in r.path)
    assert _deliver(env, "push", payload).status == "done"
    assert sum(1 for r in env.fake.requests if "/commits/" in r.path) == asked
    assert _stats(env)["base_lines_added"] == 12


def test_commits_past_the_cap_or_that_github_fails_on_are_kept_unmeasured_with_why(
    env: GitHubEnv,
) -> None:
    github = env.runtime.github
    assert github is not None
    bare = env.fake.repos[REPO].path
    before = _tip(env)
    one = _commit(bare, [before], {"a.txt": "1\n"}, "One")
    two = _commit(bare, [one], {"b.txt": "1\n2\n"}, "Two")
    three = _commit(bare, [two], {"c.txt": "1\n2\n3\n"}, "Three")
    git(bare, "update-ref", "refs/heads/main", three)
    payload = env.fake.push_payload(REPO, "refs/heads/main", three, before=before)
    payload["commits"].append({"id": "not a sha"})  # hostile: ignored

    env.fake.fail_next(500, match=f"/commits/{one}", times=10)
    CodeShare(env.runtime.engine, github.app, max_commits=2).on_push(REPO, payload)

    with DB(env.runtime.engine) as db:
        rows = {r.sha: r for r in db.exec(select(GitHubBaseCommit)).all()}
    assert set(rows) == {one, two, three}
    assert rows[one].additions is None and rows[one].reason
    assert rows[two].additions == 2 and rows[two].reason is None
    assert rows[three].additions is None and "2 commits measured per push" in (
        rows[three].reason or ""
    )
    stats = _stats(env)
    assert stats["base_lines_added"] == 2 and stats["unmeasured_commits"] == 2
    assert stats["agent_line_share"] == 0.0
