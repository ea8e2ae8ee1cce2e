"""The `protected` plugin, shipped as the example of the plugin interface: paths matching the
globs of `protected` in `.nightshift.toml` may be read but not written by the file tools."""

from __future__ import annotations

import posixpath
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from workers.errors import ToolError

if TYPE_CHECKING:
    from workers.agent.tools import Tool, ToolContext

WRITING_TOOLS = frozenset({"write_file", "edit_file"})


def is_protected(path: str, globs: list[str]) -> bool:
    clean = posixpath.normpath(path.strip().lstrip("./") or ".")
    return any(fnmatch(clean, g) or fnmatch(clean, g.rstrip("/") + "/*") for g in globs)


class ProtectedPaths:
    name = "protected"

    async def before_tool(self, ctx: ToolContext, tool: Tool, args: dict[str, Any]) -> None:
        globs = ctx.repo.protected
        path = args.get("path")
        writes = tool.name in WRITING_TOOLS and isinstance(path, str)
        if globs and writes and is_protected(str(path), globs):
            raise ToolError(
                f"{path} is protected in this repository (.nightshift.toml `protected`): "
                "you may read it but not change it"
            )

    def system_prompt(self, ctx: ToolContext) -> str:
        if not ctx.repo.protected:
            return ""
        return f"Protected paths (read-only for you): {', '.join(ctx.repo.protected)}"
