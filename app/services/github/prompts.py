"""The prompts GitHub asks with: an issue (title, body, the thread up to the mention, the
request), a PR comment, a review comment (file, line, diff hunk), a review's comments, a
failing check's log tail. Each fits the deployment's prompt limit: what does not fit is cut,
with a note saying so, so a long comment still asks for work instead of failing."""

from __future__ import annotations

from collections.abc import Sequence

from integrations.github.issues import IssueComment, ReviewComment

THREAD_CHARS = 8000
HUNK_LINES = 30


def fit(text: str, limit: int, what: str = "the text") -> str:
    """`text`, or its start plus a note when it is longer than `limit` characters."""
    if len(text) <= limit:
        return text
    note = f"\n\n[{what} was cut: it is {len(text)} characters, the limit is {limit}]"
    return text[: max(0, limit - len(note))] + note


def _thread(comments: Sequence[IssueComment]) -> str:
    lines = [f"@{c.author}: {c.body.strip()}" for c in comments if c.body.strip()]
    text = "\n\n".join(lines)
    return text[-THREAD_CHARS:]


def issue_prompt(
    repo: str,
    number: int,
    title: str,
    body: str | None,
    thread: Sequence[IssueComment],
    request: str,
    login: str,
    limit: int,
) -> str:
    """The prompt of a session started from issue #number (`body` None: the request is the
    issue's own body)."""
    head = f"GitHub issue {repo}#{number}: {title.strip()}"
    ask = f"Request from @{login}:\n{request.strip()}"
    tail = (
        f"\n\nThe pull request you open fixes #{number}: say `Fixes #{number}` in its description."
    )
    context = "" if body is None else f"\n\nIssue description:\n{body.strip() or '(empty)'}"
    earlier = _thread(thread)
    if earlier:
        context += f"\n\nEarlier in the issue's conversation:\n{earlier}"
    room = limit - len(head) - len(ask) - len(tail) - 4
    if room < 200:
        # The request alone is too long: it keeps what fits, the context goes.
        return fit(f"{head}\n\n{ask}", limit, "the request")
    return f"{head}\n\n{ask}{fit(context, room, 'the issue')}{tail}"


def comment_prompt(login: str, request: str, url: str, limit: int) -> str:
    """A follow-up asked in a PR's conversation."""
    return fit(
        f"Follow-up from @{login} on the pull request ({url}):\n{request.strip()}",
        limit,
        "the comment",
    )


def _hunk(diff_hunk: str) -> str:
    return "\n".join(diff_hunk.splitlines()[-HUNK_LINES:])


def _where(comment: ReviewComment) -> str:
    return f"{comment.path}:{comment.line}" if comment.line else comment.path or "(the diff)"


def review_comment_prompt(comment: ReviewComment, request: str, limit: int) -> str:
    """A follow-up asked on one line of the PR's diff."""
    text = (
        f"Review comment from @{comment.author} on {_where(comment)} ({comment.url}):\n"
        f"{request.strip()}\n\nThe diff hunk it is on:\n```diff\n{_hunk(comment.diff_hunk)}\n```"
    )
    return fit(text, limit, "the review comment")


def review_prompt(
    login: str, body: str, comments: Sequence[ReviewComment], url: str, limit: int
) -> str:
    """One follow-up for a whole review that requested changes."""
    parts = [f"@{login} requested changes on the pull request ({url})."]
    if body.strip():
        parts.append(f"Review summary:\n{body.strip()}")
    for c in comments:
        parts.append(f"On {_where(c)}:\n{c.body.strip()}\n```diff\n{_hunk(c.diff_hunk)}\n```")
    parts.append("Address every comment.")
    return fit("\n\n".join(parts), limit, "the review")


def ci_prompt(check: str, sha: str, url: str, logs: Sequence[tuple[str, str]], limit: int) -> str:
    """A follow-up for a failing check: its name and the tail of each failed job's log."""
    parts = [
        f"The check “{check}” failed on {sha[:12]}, the head of this pull request"
        + (f" ({url})" if url else "")
        + ". Find the cause and fix it; do not disable or skip the check."
    ]
    for job, log_tail in logs:
        parts.append(f"Log of {job} (its end):\n```\n{log_tail.strip()}\n```")
    if not logs:
        parts.append("GitHub had no log for it.")
    head, rest = parts[0], "\n\n".join(parts[1:])
    if len(head) + 2 + len(rest) <= limit:
        return f"{head}\n\n{rest}"
    # Keep the end of the logs: that is where a failure says what went wrong.
    note = f"[the logs were cut to fit the prompt limit of {limit} characters]\n"
    room = max(0, limit - len(head) - 2 - len(note))
    return fit(f"{head}\n\n{note}{rest[len(rest) - room :] if room else ''}", limit, "the check")
