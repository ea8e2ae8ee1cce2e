"""The pages a repository names (`screenshots` in `.nightshift.toml`, `images/pages.py`),
captured before and after the session's change once a prompt finishes, for the pull request.

"After" is the session's tree as the agent left it. "Before" is the base commit the pull
request is compared against, checked out beside it (a detached git worktree inside `.git`, so
it is never part of the diff), with the workspace's ignored top-level entries (installed
dependencies, build outputs the image made) linked in, as the base image had them. For each
tree the repo's `serve` command starts as a background job in the session's sandbox; once its
port listens, each page is captured by the browser inside the sandbox (`screenshot.capture`),
kept as an artifact, and the two are set side by side in Markdown that the runner adds to the
pull request's body. Nothing here can fail the prompt: a server that never listens or a page
that cannot be captured is reported in the body and as a notice instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from images.pages import Page
from workers.agent.background import jobs_of
from workers.agent.screenshot import ScreenshotArgs, capture
from workers.agent.toolbase import ToolContext
from workers.errors import ToolError
from workers.events import Notice

SERVE_TIMEOUT_S = 600.0
LISTEN_WAIT_S = 60
BEFORE_DIR = ".git/nightshift-before"
_WAIT = 'for i in $(seq 1 "$2"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exit 0; sleep 0.25; done; exit 1'
# Check out the base beside the workspace and link in what git ignores (node_modules, .venv…),
# which the image's set-up made and the base tree would otherwise lack.
_BEFORE = """
set -e
dir="$1"; base="$2"
git worktree remove --force "$dir" >/dev/null 2>&1 || rm -rf "$dir"
git worktree prune
git worktree add --quiet --detach "$dir" "$base"
git ls-files --others --ignored --exclude-standard --directory -z | while IFS= read -r -d '' p; do
  top="${p%%/*}"
  [ -e "$dir/$top" ] || [ -L "$dir/$top" ] || ln -s "$PWD/$top" "$dir/$top"
done
"""
_DROP = 'git worktree remove --force "$1" >/dev/null 2>&1 || rm -rf "$1"; git worktree prune'


@dataclass(frozen=True)
class Shot:
    url: str = ""
    """The artifact's link, when captured."""
    artifact: str = ""
    """Its id (the PNG's SHA-256): the same before and after when the page did not change."""
    error: str = ""
    """Why not, otherwise."""


async def capture_pages(ctx: ToolContext) -> str:
    """Markdown setting the repo's pages before and after side by side ("" when the repo
    names none)."""
    repo = ctx.repo
    if not repo.screenshots or repo.serve is None or repo.serve_port is None:
        return ""
    after = await _capture_tree(ctx, ".", "after")
    if isinstance(after, str):
        return await _failed(ctx, after)
    base = ctx.base() if ctx.base is not None else ""
    before: dict[str, Shot] | str = "the base commit is not known"
    if base:
        before = await _capture_base(ctx, base)
    if isinstance(before, str):
        await ctx.emit(Notice(message=f"the base's pages were not captured: {before}"))
        rows = [
            f"- **{p.name}** (`{p.path}`){_cell(after[p.name], p, 'after', '  ')}"
            for p in repo.screenshots
        ]
        return "### Screenshots\n\n" + "\n".join(rows) + f"\n\n(before: not captured: {before})"
    lines = [
        f"### Screenshots (before → after, base `{base[:10]}`)",
        "",
        "| page | before | after |",
        "|---|---|---|",
    ]
    for page in repo.screenshots:
        old, new = before[page.name], after[page.name]
        same = " (unchanged)" if old.artifact and old.artifact == new.artifact else ""
        lines.append(
            f"| **{page.name}** `{page.path}`{same} | {_cell(old, page, 'before')} "
            f"| {_cell(new, page, 'after')} |"
        )
    return "\n".join(lines)


def _cell(shot: Shot, page: Page, side: str, lead: str = "") -> str:
    if shot.url:
        image = f"![{page.name}:{side}]({shot.url})"
        return f"\n\n{lead}{image}" if lead else image
    text = f"not captured: {shot.error}".replace("|", "\\|").replace("\n", " ")
    return f": {text}" if lead else text


async def _capture_base(ctx: ToolContext, base: str) -> dict[str, Shot] | str:
    argv = ["bash", "-c", _BEFORE, "nightshift-before", BEFORE_DIR, base]
    made = await ctx.sandbox.exec(argv, timeout=120, output_cap=4000)
    try:
        if not made.ok:
            return f"could not check out {base[:10]}: {(made.stderr or made.stdout).strip()[-300:]}"
        return await _capture_tree(ctx, BEFORE_DIR, "before")
    finally:
        await ctx.sandbox.exec(["bash", "-c", _DROP, "nightshift-drop", BEFORE_DIR], timeout=60)


async def _capture_tree(ctx: ToolContext, cwd: str, side: str) -> dict[str, Shot] | str:
    """Serve the tree at `cwd` and capture each page: the shots by page name, or why the
    server did not come up."""
    repo = ctx.repo
    assert repo.serve is not None and repo.serve_port is not None
    jobs = jobs_of(ctx.sandbox)
    try:
        job = await jobs.start(ctx.sandbox, repo.serve, cwd, SERVE_TIMEOUT_S)
    except ToolError as exc:
        return f"`serve` could not start ({side}): {exc}"
    shots: dict[str, Shot] = {}
    try:
        tries = str(LISTEN_WAIT_S * 4)
        argv = ["bash", "-c", _WAIT, "nightshift-wait", str(repo.serve_port), tries]
        waited = await ctx.sandbox.exec(argv, timeout=LISTEN_WAIT_S + 10)
        if not waited.ok:
            log = (await jobs.output(ctx.sandbox, job, 1500)).strip()
            return f"`serve` did not listen on port {repo.serve_port} ({side}):\n\n```\n{log}\n```"
        for page in repo.screenshots:
            url = f"http://127.0.0.1:{repo.serve_port}{page.path}"
            try:
                shot = await capture(ctx, ScreenshotArgs(url=url), title=f"{page.name} ({side})")
            except ToolError as exc:
                shots[page.name] = Shot(error=str(exc))
                await ctx.emit(Notice(message=f"page {page.name} ({side}) was not captured: {exc}"))
                continue
            stored = shot.stored
            shots[page.name] = Shot(url=stored.shared_url or stored.url, artifact=stored.id)
    finally:
        await jobs.stop(ctx.sandbox, job)
    return shots


async def _failed(ctx: ToolContext, reason: str) -> str:
    await ctx.emit(Notice(message=f"the repo's pages were not captured: {reason}"))
    return f"### Screenshots\n\nNot captured: {reason}"
