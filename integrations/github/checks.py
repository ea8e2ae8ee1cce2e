"""Failing checks, as the App: which jobs of a workflow run or check suite failed, and the
tail of their logs (GitHub answers a log request with a redirect to a short-lived download
URL; the client follows it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from githubkit import GitHub
from githubkit.exception import GitHubException

from integrations.github.app import split_repo
from integrations.github.client import call, translate
from integrations.github.errors import GitHubNotFound

FAILED: frozenset[str] = frozenset({"failure", "timed_out", "startup_failure"})


@dataclass(frozen=True)
class FailedJob:
    id: int
    name: str
    summary: str = ""
    """What the check said of itself (`output.title`/`summary`/`text`), for non-Actions checks."""


def job_log_tail(gh: GitHub[Any], repo: str, job_id: int, max_chars: int) -> str | None:
    """The last `max_chars` of a job's log, or None when the check is not an Actions job."""
    owner, name = split_repo(repo)
    what = f"downloading the log of job {job_id} of {repo}"
    try:
        response = gh.rest.actions.download_job_logs_for_workflow_run(owner, name, job_id)
    except GitHubException as exc:
        error = translate(what, exc)
        if isinstance(error, GitHubNotFound):
            return None
        raise error from exc
    text = response.text
    return text[-max_chars:] if len(text) > max_chars else text


def summary_of(check: dict[str, Any]) -> str:
    output = check.get("output") or {}
    parts = [str(output.get(k) or "").strip() for k in ("title", "summary", "text")]
    return "\n".join(p for p in parts if p)


def failed_jobs_of_run(gh: GitHub[Any], repo: str, run_id: int) -> list[FailedJob]:
    """The failed jobs of a workflow run."""
    owner, name = split_repo(repo)
    data = call(
        f"listing the jobs of workflow run {run_id} of {repo}",
        lambda: gh.rest.actions.list_jobs_for_workflow_run(owner, name, run_id, per_page=100),
    )
    return [
        FailedJob(int(job["id"]), str(job.get("name") or ""))
        for job in (data or {}).get("jobs") or []
        if job.get("conclusion") in FAILED
    ]


def failed_runs_of_suite(gh: GitHub[Any], repo: str, suite_id: int) -> list[FailedJob]:
    """The failed check runs of a check suite."""
    owner, name = split_repo(repo)
    data = call(
        f"listing the check runs of suite {suite_id} of {repo}",
        lambda: gh.rest.checks.list_for_suite(owner, name, suite_id, per_page=100),
    )
    return [
        FailedJob(int(run["id"]), str(run.get("name") or ""), summary_of(run))
        for run in (data or {}).get("check_runs") or []
        if run.get("conclusion") in FAILED
    ]
