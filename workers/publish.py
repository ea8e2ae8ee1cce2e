"""`publish_work`: a finished prompt's changes become a commit by the prompting person and a
push of the session branch, each announced as an event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from images.sandboxes.base import Sandbox
from images.spec import RepoSpec
from integrations.forge.base import Forge
from workers.agent.loop import AgentResult
from workers.control import PromptJob, SessionContext
from workers.events import (
    Author,
    BranchPushed,
    CommitCreated,
    Event,
    IdeFilesEdited,
    for_prompt,
)
from workers.gitops import commit_changes, push_commits, tree_state


async def publish_work(
    *,
    sandbox: Sandbox,
    base_sha: str,
    ctx: SessionContext,
    job: PromptJob,
    result: AgentResult,
    forge_for: Callable[[RepoSpec], Forge],
    emit: Callable[[Event], Awaitable[None]],
    max_push_bytes: int,
    editors: Callable[[], Awaitable[Sequence[Author]]] | None = None,
) -> None:
    """Commit as the prompting person, push from outside the sandbox, announce the branch.

    `base_sha` is the base commit the workspace stands on once its sync has ended; `editors`
    reads who changed files through the IDE since the last commit, to co-author this one: only
    when there is a commit to make (a prompt that changed nothing asks the control plane
    nothing).
    """
    emit = for_prompt(emit, job.id, job.attempt)
    title = result.title or ctx.title or _first_line(job.text)
    tree = await tree_state(sandbox)
    head = tree.head
    if tree.dirty:
        committed = await commit_changes(
            sandbox,
            title,
            result.summary,
            job.author,
            [*ctx.authors, *(await editors() if editors is not None else ())],
        )
        head = committed.sha
        await emit(
            CommitCreated(
                sha=committed.sha,
                author=job.author.git_identity(),
                co_authors=committed.co_authors,
                message=committed.message,
            )
        )
    if head in (base_sha, ctx.pushed_sha):
        return
    forge = forge_for(ctx.repo)
    pushed = await push_commits(
        sandbox, forge, ctx.repo.url, ctx.branch, base_sha, ctx.pushed_sha, max_push_bytes
    )
    await emit(
        BranchPushed(
            branch=ctx.branch,
            sha=pushed,
            base=ctx.repo.base,
            base_sha=base_sha,
            title=title,
            body=_body(result),
            draft=result.draft,
        )
    )


def ide_editors(events: Sequence[Event]) -> list[Author]:
    """Who changed files through the IDE after the last commit (`commit_created` and
    `ide_files_edited` events, oldest first). Read from the session's stored events, which only
    the API writes: nothing in the sandbox can add a co-author."""
    editors: dict[int, Author] = {}
    for event in events:
        if isinstance(event, CommitCreated):
            editors.clear()
        elif isinstance(event, IdeFilesEdited):
            editors.setdefault(event.author.id, event.author)
    return list(editors.values())


def _body(result: AgentResult) -> str:
    """The model's summary, then the verify commands with their results."""
    parts = [result.summary.strip()]
    if result.draft:
        parts.append(
            "**Draft: the repository's verify commands still fail after the last attempt.**"
        )
    if result.verify_report:
        parts.append(result.verify_report)
    if result.pages:
        parts.append(result.pages)
    return "\n\n".join(p for p in parts if p)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "Changes from Nightshift"
    return line[:72]
