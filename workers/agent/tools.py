"""The agent's tools. Names are stable: hooks, plugins and clients refer to them.

File tools act on the sandbox's workspace through the sandbox interface (paths relative to the
repository root); `run` executes one command as its own sandboxed process.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, Field

from images.ansi import strip_ansi
from images.sandboxes.base import SandboxError
from workers.agent.background import JOB_TOOLS, start_job
from workers.agent.screenshot import SCREENSHOT
from workers.agent.toolbase import Finished, Tool, ToolContext, ToolOutput
from workers.errors import ControlPlaneError, ToolError
from workers.events import ChildSpawned, Notice

__all__ = ["TOOLS", "Finished", "Tool", "ToolContext", "ToolOutput", "call_tool", "describe_call"]


def _decode(data: bytes, path: str) -> str:
    if b"\x00" in data[:8192]:
        raise ToolError(f"{path}: binary file; use `run` with a tool like `xxd` or `file`")
    return data.decode("utf-8", errors="replace")


class ReadFileArgs(BaseModel):
    path: str = Field(description="Path relative to the repository root")
    start_line: int = Field(1, ge=1, description="First line to return (1-based)")
    max_lines: int = Field(2000, ge=1, le=20000, description="How many lines at most")


async def read_file(ctx: ToolContext, a: ReadFileArgs) -> ToolOutput:
    text = _decode(await ctx.sandbox.read_file(a.path), a.path)
    lines = text.splitlines(keepends=True)
    chosen = lines[a.start_line - 1 : a.start_line - 1 + a.max_lines]
    body = "".join(chosen)
    more = len(lines) - (a.start_line - 1 + len(chosen))
    if more > 0:
        body += (
            f"\n[... {more} more lines; read again with start_line={a.start_line + len(chosen)}]"
        )
    return ToolOutput(body)


class ListFilesArgs(BaseModel):
    path: str = Field(".", description="Directory relative to the repository root")
    recursive: bool = Field(False, description="List the whole tree below the directory")


async def list_files(ctx: ToolContext, a: ListFilesArgs) -> ToolOutput:
    entries = await ctx.sandbox.list_files(a.path, recursive=a.recursive, limit=2000)
    lines = [e.path + ("/" if e.kind == "dir" else "") for e in entries]
    if len(entries) >= 2000:
        lines.append("[... listing stopped at 2000 entries]")
    return ToolOutput("\n".join(lines) if lines else "(empty directory)")


class SearchArgs(BaseModel):
    pattern: str = Field(min_length=1, description="Extended regular expression (grep -E)")
    path: str = Field(".", description="File or directory to search, relative to the root")
    glob: str | None = Field(None, description="Only files whose name matches, e.g. '*.py'")
    ignore_case: bool = False


async def search(ctx: ToolContext, a: SearchArgs) -> ToolOutput:
    argv = ["grep", "-rnIE", "--exclude-dir=.git", "--color=never", "-m", "50"]
    if a.ignore_case:
        argv.append("-i")
    if a.glob:
        argv.append(f"--include={a.glob}")
    argv += ["-e", a.pattern, "--", a.path]
    result = await ctx.sandbox.exec(argv, timeout=60, output_cap=200_000)
    if result.exit_code == 1:
        return ToolOutput("no matches", exit_code=1)
    if result.exit_code != 0:
        raise ToolError(f"search failed: {result.stderr.strip() or result.exit_code}")
    out = result.stdout
    if result.truncated:
        out += "\n[... output truncated; narrow the search]"
    return ToolOutput(out, exit_code=0)


class WriteFileArgs(BaseModel):
    path: str = Field(description="Path relative to the repository root")
    content: str = Field(description="The whole new content of the file")


async def write_file(ctx: ToolContext, a: WriteFileArgs) -> ToolOutput:
    data = a.content.encode()
    await ctx.sandbox.write_file(a.path, data)
    return ToolOutput(f"wrote {len(data)} bytes to {a.path}")


class EditFileArgs(BaseModel):
    path: str = Field(description="Path relative to the repository root")
    old_text: str = Field(min_length=1, description="Exact text to replace")
    new_text: str = Field(description="Replacement text")
    replace_all: bool = Field(False, description="Replace every occurrence, not just one")


async def edit_file(ctx: ToolContext, a: EditFileArgs) -> ToolOutput:
    text = _decode(await ctx.sandbox.read_file(a.path), a.path)
    count = text.count(a.old_text)
    if count == 0:
        raise ToolError(
            f"{a.path}: old_text was not found; read the file and copy the text exactly"
        )
    if count > 1 and not a.replace_all:
        raise ToolError(
            f"{a.path}: old_text occurs {count} times; add context to make it unique "
            "or set replace_all"
        )
    updated = text.replace(a.old_text, a.new_text, -1 if a.replace_all else 1)
    await ctx.sandbox.write_file(a.path, updated.encode())
    return ToolOutput(f"replaced {count if a.replace_all else 1} occurrence(s) in {a.path}")


class RunArgs(BaseModel):
    command: str = Field(
        min_length=1, description="A bash command line, run in the repository root"
    )
    timeout_s: float = Field(600, gt=0, le=3600, description="Wall-clock limit in seconds")
    cwd: str = Field(".", description="Directory relative to the repository root")
    background: bool = Field(
        False,
        description="Keep it running (a server) and return a job id at once; read it with "
        "job_output, stop it with job_stop. It ends with the sandbox or after timeout_s.",
    )


async def run(ctx: ToolContext, a: RunArgs) -> ToolOutput:
    if a.background:
        return await start_job(ctx, a.command, a.cwd, a.timeout_s)
    seen = len(ctx.sandbox.egress_refusals())
    result = await ctx.sandbox.exec(["bash", "-c", a.command], cwd=a.cwd, timeout=a.timeout_s)
    refused = ctx.sandbox.egress_refusals()[seen:]
    for line in refused:
        await ctx.emit(Notice(message=f"egress refused {line}"))
    parts = [f"exit code {result.exit_code}"]
    parts += [f"(the sandbox's egress proxy refused {line})" for line in refused]
    ended = {
        "timeout": f"(killed after {a.timeout_s:g}s wall-clock timeout)",
        "sandbox_timeout": "(killed: the sandbox reached its lifetime limit)",
        "memory": "(killed: out of memory)",
        "cpu": "(killed: CPU-time limit reached)",
        "output": "(killed: it wrote far more output than the cap)",
    }
    reason = result.ended_by or (
        "timeout" if result.timed_out else "memory" if result.oom_killed else ""
    )
    if reason:
        parts.append(ended[reason])
    if "pids" in result.limits_hit:
        parts.append("(the process limit refused some forks)")
    if result.stdout:
        parts.append("stdout:\n" + strip_ansi(result.stdout))
    if result.stderr:
        parts.append("stderr:\n" + strip_ansi(result.stderr))
    if result.truncated:
        parts.append("[output was truncated at the sandbox's output cap]")
    return ToolOutput("\n".join(parts), is_error=result.exit_code != 0, exit_code=result.exit_code)


class SpawnArgs(BaseModel):
    prompt: str = Field(min_length=1, description="Complete instructions for the sub-session")
    repo: str | None = Field(None, description="Repository name; defaults to this session's repo")
    model: str | None = Field(
        None,
        description="Model spec from the deployment's list (e.g. openai:gpt-4.1); "
        "defaults to this session's model",
    )


async def spawn_session(ctx: ToolContext, a: SpawnArgs) -> ToolOutput:
    if ctx.depth >= ctx.config.max_spawn_depth:
        raise ToolError(
            f"sub-sessions may nest {ctx.config.max_spawn_depth} deep; do this work yourself"
        )
    try:
        child = await ctx.control.spawn_session(
            ctx.session_id, a.repo, a.prompt, ctx.author, a.model
        )
    except ControlPlaneError as exc:
        raise ToolError(str(exc)) from exc
    repo = a.repo or ctx.repo.name
    await ctx.emit(ChildSpawned(child_id=child, repo=repo, prompt=a.prompt))
    return ToolOutput(
        f"started session {child} on {repo}; check it with session_status(session_id={child!r})"
    )


class StatusArgs(BaseModel):
    session_id: str = Field(min_length=1, description="The id of any session")


async def session_status(ctx: ToolContext, a: StatusArgs) -> ToolOutput:
    try:
        summary = await ctx.control.session_status(a.session_id)
    except ControlPlaneError as exc:
        raise ToolError(str(exc)) from exc
    return ToolOutput(summary.model_dump_json(indent=2))


class FinishArgs(BaseModel):
    summary: str = Field(min_length=1, description="What was done, for the pull request body")
    title: str | None = Field(None, max_length=120, description="Pull request title")


async def finish(ctx: ToolContext, a: FinishArgs) -> ToolOutput:
    return ToolOutput("finished", finished=Finished(a.summary, a.title or ""))


class LoadSkillArgs(BaseModel):
    name: str = Field(min_length=1, description="The skill's name, as listed in your instructions")


async def load_skill(ctx: ToolContext, a: LoadSkillArgs) -> ToolOutput:
    skills = ctx.instructions.skills
    skill = skills.get(a.name)
    if skill is None:
        known = ", ".join(sorted(skills)) or "none"
        raise ToolError(f"no skill named {a.name!r}; available: {known}")
    files = "".join(f"\n- {f}" for f in skill.files if f != "SKILL.md")
    where = skill.source.removeprefix("operator:")
    listing = f"\n\nFiles of this skill (beside {where}):{files}" if files else ""
    return ToolOutput(f"# Skill: {skill.name}\n\n{skill.text}{listing}")


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        Tool("read_file", "Read a text file of the repository.", ReadFileArgs, read_file),
        Tool("list_files", "List a directory of the repository.", ListFilesArgs, list_files),
        Tool("search", "Search file contents with a regular expression.", SearchArgs, search),
        Tool("write_file", "Create or overwrite a file.", WriteFileArgs, write_file, writes=True),
        Tool(
            "edit_file",
            "Replace exact text in a file (the text must occur once unless replace_all).",
            EditFileArgs,
            edit_file,
            writes=True,
        ),
        Tool(
            "run",
            "Run a bash command in the sandbox (no network unless the repo allows hosts); "
            "background=true keeps it running (a server) and returns a job id.",
            RunArgs,
            run,
            writes=True,
        ),
        Tool(
            "spawn_session",
            "Start an independent sub-session (its own sandbox, branch and PR) and get its id.",
            SpawnArgs,
            spawn_session,
        ),
        Tool(
            "session_status",
            "Status, branch, PR and latest events of a session.",
            StatusArgs,
            session_status,
        ),
        Tool(
            "load_skill",
            "Load the full text of a skill listed in your instructions.",
            LoadSkillArgs,
            load_skill,
        ),
        *JOB_TOOLS,
        SCREENSHOT,
        Tool(
            "finish",
            "End this task: your changes are committed and proposed as a pull request.",
            FinishArgs,
            finish,
        ),
    ]
}


async def call_tool(
    ctx: ToolContext, tool: Tool, arguments: dict[str, Any], hooks: Any
) -> ToolOutput:
    """Validate, run hooks, run the tool; every failure becomes an error output for the model."""
    try:
        args = tool.parse(arguments)
        await hooks.before(ctx, tool, arguments)
        out = await tool.run(ctx, args)
    except (ToolError, SandboxError) as exc:
        out = ToolOutput(str(exc), is_error=True)
    shown: ToolOutput = await hooks.after(ctx, tool, arguments, out)
    limit = ctx.config.tool_output_chars
    if len(shown.text) > limit:
        head = shown.text[: limit // 2]
        tail = shown.text[-limit // 4 :]
        omitted = len(shown.text) - len(head) - len(tail)
        shown = replace(shown, text=f"{head}\n[... {omitted} characters omitted ...]\n{tail}")
    return shown


def describe_call(name: str, arguments: dict[str, Any]) -> str:
    """A one-line human summary of a tool call, for terminals and Slack."""
    if name == "run":
        suffix = " &" if arguments.get("background") is True else ""
        return f"$ {arguments.get('command', '')}{suffix}"
    if name in ("read_file", "write_file", "edit_file", "list_files"):
        return f"{name} {arguments.get('path', '.')}"
    if name == "screenshot":
        return f"screenshot {arguments.get('url', '')}"
    if name == "search":
        return f"search {shlex.quote(str(arguments.get('pattern', '')))}"
    return name
