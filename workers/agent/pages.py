"""The pages a repository names (`screenshots` in `.nightshift.toml`, `images/pages.py`),
captured from the session's tree after each finished prompt, for the pull request.

The repo's `serve` command starts as a background job in the session's sandbox; once its port
listens, each page is captured by the browser inside the sandbox (`screenshot.capture`), kept
as an artifact, and listed in Markdown that the runner adds to the pull request's body. Nothing
here can fail the prompt: a server that never listens or a page that cannot be captured is
reported in the body and as a notice instead.
"""

from __future__ import annotations

from workers.agent.background import jobs_of
from workers.agent.screenshot import ScreenshotArgs, capture
from workers.agent.toolbase import ToolContext
from workers.errors import ToolError
from workers.events import Notice

SERVE_TIMEOUT_S = 600.0
LISTEN_WAIT_S = 60
_WAIT = 'for i in $(seq 1 "$2"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exit 0; sleep 0.25; done; exit 1'


async def capture_pages(ctx: ToolContext) -> str:
    """Markdown listing the repo's pages as captured now ("" when the repo names none)."""
    repo = ctx.repo
    if not repo.screenshots or repo.serve is None or repo.serve_port is None:
        return ""
    jobs = jobs_of(ctx.sandbox)
    lines: list[str] = []
    try:
        job = await jobs.start(ctx.sandbox, repo.serve, ".", SERVE_TIMEOUT_S)
    except ToolError as exc:
        return await _failed(ctx, f"`serve` could not start: {exc}")
    try:
        tries = str(LISTEN_WAIT_S * 4)
        argv = ["bash", "-c", _WAIT, "nightshift-wait", str(repo.serve_port), tries]
        waited = await ctx.sandbox.exec(argv, timeout=LISTEN_WAIT_S + 10)
        if not waited.ok:
            log = (await jobs.output(ctx.sandbox, job, 1500)).strip()
            return await _failed(
                ctx, f"`serve` did not listen on port {repo.serve_port}:\n\n```\n{log}\n```"
            )
        for page in repo.screenshots:
            url = f"http://127.0.0.1:{repo.serve_port}{page.path}"
            try:
                shot = await capture(ctx, ScreenshotArgs(url=url))
            except ToolError as exc:
                lines.append(f"- **{page.name}** (`{page.path}`): not captured: {exc}")
                await ctx.emit(Notice(message=f"page {page.name} was not captured: {exc}"))
                continue
            lines.append(
                f"- **{page.name}** (`{page.path}`)\n\n  ![{page.name}]({shot.stored.url})"
            )
    finally:
        await jobs.stop(ctx.sandbox, job)
    return "### Screenshots\n\n" + "\n".join(lines)


async def _failed(ctx: ToolContext, reason: str) -> str:
    await ctx.emit(Notice(message=f"the repo's pages were not captured: {reason}"))
    return f"### Screenshots\n\nNot captured: {reason}"
