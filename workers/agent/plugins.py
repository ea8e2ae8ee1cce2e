"""Plugins: the public interface around the agent loop (docs/PLUGINS.md tells the whole of it).

A plugin is an object (or a class, instantiated once) found through the entry point group
`nightshift.plugins` or listed in `NIGHTSHIFT_PLUGINS=module:attr,…`. It may define any of:

- `name: str`
- `async before_tool(ctx, tool, args)`: raise `workers.errors.ToolError` to refuse the call;
  it may change `args` in place to rewrite it
- `async after_tool(ctx, tool, args, out) -> ToolOutput`: rewrite the output
- `system_prompt(ctx) -> str`: text added to the system prompt
- `async on_event(event)`: called with every event a run emits, after it is published
- `tools() -> list[Tool]`: tools added to the model's list (`workers.agent.tools.Tool`); they
  run through the same `before_tool`/`after_tool` hooks as the built-in ones

A plugin that raises anything else is reported as a `plugin_error` event and the run goes on
as if it were not there (a raising tool returns an error to the model). A plugin that cannot be
imported, or adds a tool whose name is taken, stops `serve`/`worker` at start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any

from workers.agent.hooks import Hooks, OnEvent
from workers.agent.tools import TOOLS, Tool, ToolContext, ToolOutput
from workers.errors import ToolError, WorkersError
from workers.events import Emit, ErrorRaised, Event, for_prompt

GROUP = "nightshift.plugins"
BUILTIN = ("workers.agent.protected:ProtectedPaths",)
"""Plugins every deployment runs; they act only when a repository asks (e.g. `protected`)."""


class PluginLoadError(WorkersError):
    """A plugin could not be imported or built; the message names it and says why."""


@dataclass(frozen=True)
class Plugin:
    name: str
    obj: Any
    tools: tuple[Tool, ...] = ()


def _resolve(name: str, target: str) -> Plugin:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise PluginLoadError(f"plugin {name!r}: {target!r} is not of the form module:attr")
    try:
        value: Any = importlib.import_module(module)
        for part in attr.split("."):
            value = getattr(value, part)
        obj = value() if isinstance(value, type) else value
        tools = tuple(obj.tools()) if callable(getattr(obj, "tools", None)) else ()
    except Exception as exc:
        raise PluginLoadError(f"plugin {name!r} ({target}): {type(exc).__name__}: {exc}") from exc
    return Plugin(str(getattr(obj, "name", name)), obj, tools)


def _check_tools(plugins: list[Plugin]) -> None:
    taken: dict[str, str] = {name: "a built-in tool" for name in TOOLS}
    for plugin in plugins:
        for tool in plugin.tools:
            if not isinstance(tool, Tool):
                raise PluginLoadError(
                    f"plugin {plugin.name!r}: tools() must return workers.agent.tools.Tool "
                    f"objects, not {type(tool).__name__}"
                )
            if tool.name in taken:
                raise PluginLoadError(
                    f"plugin {plugin.name!r}: tool {tool.name!r} is already {taken[tool.name]}"
                )
            taken[tool.name] = f"a tool of plugin {plugin.name!r}"


def load_plugins(listed: tuple[str, ...]) -> list[Plugin]:
    """The built-in plugins, those installed under the entry point group, then `listed`.

    All or nothing: the first that fails raises `PluginLoadError`.
    """
    plugins = [_resolve(t.rpartition(":")[2], t) for t in BUILTIN]
    for ep in entry_points(group=GROUP):
        plugins.append(_resolve(ep.name, ep.value))
    for target in listed:
        if target.strip():
            plugins.append(_resolve(target.strip(), target.strip()))
    _check_tools(plugins)
    return plugins


def plugin_hooks(plugins: list[Plugin], report: Emit | None = None) -> Hooks:
    """The plugins' hooks and tools, each isolated: a crash becomes an event, never a failed
    call. `report` publishes what an `on_event` hook raised (without `on_event` seeing it)."""
    hooks = Hooks()
    for plugin in plugins:
        hooks.tools += [_guard_tool(plugin.name, t) for t in plugin.tools]
        on_event = getattr(plugin.obj, "on_event", None)
        if on_event is not None and report is not None:
            hooks.on_event.append(_guard_event(plugin.name, on_event, report))
        before = getattr(plugin.obj, "before_tool", None)
        after = getattr(plugin.obj, "after_tool", None)
        if before is not None:
            hooks.before_tool.append(_guard_before(plugin.name, before))
        if after is not None:
            hooks.after_tool.append(_guard_after(plugin.name, after))
        if getattr(plugin.obj, "system_prompt", None) is not None:
            hooks.system_prompt.append(_guard_prompt(plugin.obj))
    return hooks


async def _report(ctx: ToolContext, name: str, where: str, exc: Exception) -> None:
    await ctx.emit(
        ErrorRaised(
            code="plugin_error",
            message=f"plugin {name} raised in {where}: {type(exc).__name__}: {exc}",
        )
    )


def _guard_before(name: str, hook: Any) -> Any:
    async def guarded(ctx: ToolContext, tool: Tool, args: dict[str, Any]) -> None:
        try:
            await hook(ctx, tool, args)
        except ToolError:
            raise
        except Exception as exc:
            await _report(ctx, name, "before_tool", exc)

    return guarded


def _guard_after(name: str, hook: Any) -> Any:
    async def guarded(
        ctx: ToolContext, tool: Tool, args: dict[str, Any], out: ToolOutput
    ) -> ToolOutput:
        try:
            result: ToolOutput = await hook(ctx, tool, args, out)
            return result
        except Exception as exc:
            await _report(ctx, name, "after_tool", exc)
            return out

    return guarded


def _guard_prompt(obj: Any) -> Any:
    def guarded(ctx: ToolContext) -> str:
        try:
            return str(obj.system_prompt(ctx) or "")
        except Exception:  # a crashing plugin adds nothing to the prompt
            return ""

    return guarded


def _guard_tool(name: str, tool: Tool) -> Tool:
    async def guarded(ctx: ToolContext, args: Any) -> ToolOutput:
        try:
            out = await tool.run(ctx, args)
        except ToolError:
            raise
        except Exception as exc:
            await _report(ctx, name, f"tool {tool.name}", exc)
            return ToolOutput(f"{tool.name} failed: {type(exc).__name__}: {exc}", is_error=True)
        return out if isinstance(out, ToolOutput) else ToolOutput(str(out))

    return replace(tool, run=guarded)


def _guard_event(name: str, hook: Any, report: Emit) -> OnEvent:
    async def guarded(event: Event) -> None:
        try:
            await hook(event)
        except Exception as exc:
            message = (
                f"plugin {name} raised in on_event ({event.type}): {type(exc).__name__}: {exc}"
            )
            # The error belongs to the run of the event the plugin failed on.
            await for_prompt(report, event.prompt_id, event.attempt)(
                ErrorRaised(code="plugin_error", message=message)
            )

    return guarded
