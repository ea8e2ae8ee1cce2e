"""The `protected` plugin, shipped as the example of the plugin interface: paths matching the
globs of `protected` in `.nightshift.toml` may be read but not written by the agent.

`write_file`/`edit_file` on such a path are refused before they run. A `run` command cannot be
judged before it runs, so the protected files are read before it and compared after it: what
it changed, removed or created there is put back as it was (from the copy kept outside the
sandbox) and the model is told the write was refused.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from images.sandboxes.base import Sandbox, SandboxError, SandboxFileError
from workers.errors import ToolError

if TYPE_CHECKING:
    from workers.agent.tools import Tool, ToolContext, ToolOutput

WRITING_TOOLS = frozenset({"write_file", "edit_file"})
MAX_FILE_BYTES = 16 * 1024 * 1024
"""Protected files are kept (outside the sandbox) up to this size around a `run`; a larger one
is left unguarded by `run`, and the model's output says so."""
_TOO_LARGE = b"\x00too large\x00"


def is_protected(path: str, globs: list[str]) -> bool:
    clean = posixpath.normpath(path.strip().lstrip("./") or ".")
    return any(fnmatch(clean, g) or fnmatch(clean, g.rstrip("/") + "/*") for g in globs)


async def protected_files(sandbox: Sandbox, globs: list[str]) -> dict[str, bytes]:
    """The content of every file of the workspace (tracked or not) that `globs` protect."""
    listed = await sandbox.exec(
        ["git", "ls-files", "-z", "--cached", "--others"], timeout=120, output_cap=64 * 1024 * 1024
    )
    if not listed.ok or listed.truncated:
        raise SandboxError(f"could not list the workspace's files: {listed.stderr.strip()}")
    files: dict[str, bytes] = {}
    for path in sorted({p for p in listed.stdout.split("\0") if p}):
        if not is_protected(path, globs):
            continue
        try:
            data = await sandbox.read_file(path, max_bytes=MAX_FILE_BYTES + 1)
        except SandboxFileError:
            continue  # listed by the index but gone from the tree, or not a regular file
        files[path] = _TOO_LARGE if len(data) > MAX_FILE_BYTES else data
    return files


class ProtectedPaths:
    name = "protected"

    def __init__(self) -> None:
        self._before: dict[str, dict[str, bytes]] = {}
        """Per session (one tool call at a time each): protected files before a `run`."""

    async def before_tool(self, ctx: ToolContext, tool: Tool, args: dict[str, Any]) -> None:
        globs = ctx.repo.protected
        if not globs:
            return
        path = args.get("path")
        if tool.name in WRITING_TOOLS and isinstance(path, str) and is_protected(path, globs):
            raise ToolError(
                f"{path} is protected in this repository (.nightshift.toml `protected`): "
                "you may read it but not change it"
            )
        if tool.name == "run":
            self._before[ctx.session_id] = await protected_files(ctx.sandbox, globs)

    async def after_tool(
        self, ctx: ToolContext, tool: Tool, args: dict[str, Any], out: ToolOutput
    ) -> ToolOutput:
        before = self._before.pop(ctx.session_id, None) if tool.name == "run" else None
        if before is None:
            return out
        after = await protected_files(ctx.sandbox, ctx.repo.protected)
        changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        restored, unguarded = [], []
        for path in changed:
            if before.get(path) == _TOO_LARGE:
                unguarded.append(path)
            elif path in before:
                await ctx.sandbox.write_file(path, before[path])
                restored.append(path)
            else:
                await ctx.sandbox.exec(["rm", "-f", "--", path], timeout=60)
                restored.append(path)
        notes = []
        if restored:
            notes.append(
                f"[refused: this command wrote to protected paths ({', '.join(restored)}); "
                "they were restored as they were. You may read them but not change them.]"
            )
        if unguarded:
            notes.append(
                f"[protected paths over {MAX_FILE_BYTES // (1024 * 1024)} MiB changed and were "
                f"not restored: {', '.join(unguarded)}]"
            )
        if not notes:
            return out
        return replace(out, text="\n".join([out.text, *notes]), is_error=True)

    def system_prompt(self, ctx: ToolContext) -> str:
        if not ctx.repo.protected:
            return ""
        return f"Protected paths (read-only for you): {', '.join(ctx.repo.protected)}"
