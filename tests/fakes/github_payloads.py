"""Webhook payloads shaped like GitHub's own examples (docs.github.com, "Webhook events and
payloads") for issues, comments, reviews and checks, built from the fake GitHub's state so the
API calls the handlers make next (thread, review comments, logs) find what the payload names."""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.github import FakeGitHub, _iso


def _repo(fake: FakeGitHub, repo: str) -> dict[str, Any]:
    return fake._repo_json(fake.repos[repo.lower()])


def _envelope(fake: FakeGitHub, repo: str, action: str, sender: str) -> dict[str, Any]:
    return {
        "action": action,
        "repository": _repo(fake, repo),
        "organization": {"login": repo.split("/")[0], "id": 1},
        "installation": {"id": fake.repos[repo.lower()].installation_id, "node_id": "MDIz"},
        "sender": fake.user_json(sender),
    }


def issue_json(
    fake: FakeGitHub, repo: str, number: int, title: str, body: str | None, login: str
) -> dict[str, Any]:
    return {
        "url": f"{fake.api_url}/repos/{repo}/issues/{number}",
        "html_url": f"https://github.example/{repo}/issues/{number}",
        "id": 700000 + number,
        "node_id": "I_kwDO",
        "number": number,
        "title": title,
        "user": fake.user_json(login),
        "labels": [],
        "state": "open",
        "locked": False,
        "assignees": [],
        "comments": 0,
        "created_at": _iso(time.time()),
        "updated_at": _iso(time.time()),
        "author_association": "MEMBER",
        "body": body,
    }


def issue_opened(
    fake: FakeGitHub, repo: str, number: int, title: str, body: str | None, login: str
) -> dict[str, Any]:
    """`issues` with action `opened`."""
    return {
        **_envelope(fake, repo, "opened", login),
        "issue": issue_json(fake, repo, number, title, body, login),
    }


def issue_comment(
    fake: FakeGitHub,
    repo: str,
    number: int,
    comment: dict[str, Any],
    *,
    action: str = "created",
    title: str = "The README is wrong",
    issue_body: str | None = "It says 1.0 but we shipped 2.0.",
    on_pr: bool = False,
) -> dict[str, Any]:
    """`issue_comment` for a comment made with `FakeGitHub.add_issue_comment`."""
    issue = issue_json(fake, repo, number, title, issue_body, "octocat")
    if on_pr:
        issue["pull_request"] = {
            "url": f"{fake.api_url}/repos/{repo}/pulls/{number}",
            "html_url": f"https://github.example/{repo}/pull/{number}",
        }
    public = {k: v for k, v in comment.items() if k not in ("repo", "number", "token")}
    payload = {
        **_envelope(fake, repo, action, str(comment["user"]["login"])),
        "issue": issue,
        "comment": {**public, "author_association": "MEMBER"},
    }
    if action == "edited":
        payload["changes"] = {"body": {"from": "before"}}
    return payload


def review_comment_json(
    fake: FakeGitHub,
    repo: str,
    number: int,
    comment_id: int,
    login: str,
    body: str,
    *,
    path: str = "README.md",
    line: int = 3,
    diff_hunk: str = "@@ -1,3 +1,3 @@\n # proj\n-version 1.0\n+version 2.0",
    review_id: int = 1,
) -> dict[str, Any]:
    return {
        "id": comment_id,
        "pull_request_review_id": review_id,
        "diff_hunk": diff_hunk,
        "path": path,
        "commit_id": "0" * 40,
        "user": fake.user_json(login),
        "body": body,
        "created_at": _iso(time.time()),
        "html_url": f"https://github.example/{repo}/pull/{number}#discussion_r{comment_id}",
        "author_association": "MEMBER",
        "line": line,
        "original_line": line,
        "side": "RIGHT",
    }


def review_comment_created(
    fake: FakeGitHub, repo: str, number: int, comment: dict[str, Any]
) -> dict[str, Any]:
    """`pull_request_review_comment` with action `created`."""
    pull = fake._pull_json(fake.pull(repo, number))
    return {
        **_envelope(fake, repo, "created", str(comment["user"]["login"])),
        "comment": comment,
        "pull_request": pull,
    }


def review_submitted(
    fake: FakeGitHub,
    repo: str,
    number: int,
    review_id: int,
    login: str,
    state: str,
    body: str | None,
    comments: list[dict[str, Any]],
) -> dict[str, Any]:
    """`pull_request_review` with action `submitted`; its line comments are served by the
    fake's reviews API."""
    fake.review_comments[review_id] = comments
    pull = fake.pull(repo, number)
    return {
        **_envelope(fake, repo, "submitted", login),
        "review": {
            "id": review_id,
            "user": fake.user_json(login),
            "body": body,
            "commit_id": pull.head_sha,
            "submitted_at": _iso(time.time()),
            "state": state,
            "html_url": f"https://github.example/{repo}/pull/{number}#pullrequestreview-{review_id}",
            "author_association": "MEMBER",
        },
        "pull_request": fake._pull_json(pull),
    }


def _pulls_of(fake: FakeGitHub, repo: str, head_sha: str) -> list[dict[str, Any]]:
    return [
        {
            "number": p.number,
            "head": {"ref": p.head, "sha": p.head_sha},
            "base": {"ref": p.base},
        }
        for p in fake.pulls
        if p.repo.lower() == repo.lower() and p.head_sha == head_sha
    ]


def check_run_json(
    fake: FakeGitHub,
    repo: str,
    run_id: int,
    name: str,
    head_sha: str,
    conclusion: str,
    *,
    log: str | None = None,
    summary: str | None = None,
) -> dict[str, Any]:
    """A check run; with `log`, it is an Actions job whose log the fake serves."""
    if log is not None:
        fake.job_logs[run_id] = log
    return {
        "id": run_id,
        "name": name,
        "node_id": "CR_kwDO",
        "head_sha": head_sha,
        "external_id": "",
        "url": f"{fake.api_url}/repos/{repo}/check-runs/{run_id}",
        "html_url": f"https://github.example/{repo}/runs/{run_id}",
        "status": "completed",
        "conclusion": conclusion,
        "started_at": _iso(time.time() - 60),
        "completed_at": _iso(time.time()),
        "output": {
            "title": f"{name} {conclusion}" if summary else None,
            "summary": summary,
            "text": None,
            "annotations_count": 0,
        },
        "check_suite": {"id": 5000 + run_id},
        "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
        "pull_requests": _pulls_of(fake, repo, head_sha),
    }


def check_run_completed(fake: FakeGitHub, repo: str, run: dict[str, Any]) -> dict[str, Any]:
    """`check_run` with action `completed`."""
    return {**_envelope(fake, repo, "completed", "octocat"), "check_run": run}


def check_suite_completed(
    fake: FakeGitHub,
    repo: str,
    suite_id: int,
    head_sha: str,
    conclusion: str,
    runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """`check_suite` with action `completed`; its runs are served by the checks API."""
    fake.suite_runs[suite_id] = runs
    return {
        **_envelope(fake, repo, "completed", "octocat"),
        "check_suite": {
            "id": suite_id,
            "head_branch": "nightshift/x",
            "head_sha": head_sha,
            "status": "completed",
            "conclusion": conclusion,
            "url": f"{fake.api_url}/repos/{repo}/check-suites/{suite_id}",
            "pull_requests": _pulls_of(fake, repo, head_sha),
            "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
            "latest_check_runs_count": len(runs),
        },
    }


def workflow_run_completed(
    fake: FakeGitHub,
    repo: str,
    run_id: int,
    name: str,
    head_sha: str,
    conclusion: str,
    jobs: list[dict[str, Any]],
) -> dict[str, Any]:
    """`workflow_run` with action `completed`; its jobs are served by the Actions API."""
    fake.run_jobs[run_id] = jobs
    return {
        **_envelope(fake, repo, "completed", "octocat"),
        "workflow_run": {
            "id": run_id,
            "name": name,
            "head_branch": "nightshift/x",
            "head_sha": head_sha,
            "run_number": 7,
            "event": "pull_request",
            "status": "completed",
            "conclusion": conclusion,
            "workflow_id": 161335,
            "html_url": f"https://github.example/{repo}/actions/runs/{run_id}",
            "pull_requests": _pulls_of(fake, repo, head_sha),
            "run_attempt": 1,
        },
        "workflow": {"id": 161335, "name": name, "path": ".github/workflows/ci.yml"},
    }


def job_json(fake: FakeGitHub, job_id: int, name: str, conclusion: str, log: str) -> dict[str, Any]:
    """An Actions job of a workflow run, whose log the fake serves."""
    fake.job_logs[job_id] = log
    return {"id": job_id, "name": name, "status": "completed", "conclusion": conclusion}
