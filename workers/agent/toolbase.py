"""What every tool is made of: the context it acts in, what it returns, and its declaration.

Kept apart from the `TOOLS` table (`tools.py`) so that tools living in modules of their own
(`background.py`, `screenshot.py`) can be declared without importing the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from images.sandboxes.base import Sandbox
from images.spec import RepoSpec
from integrations.llm.types import ImagePart, ToolSpec
from workers.agent.instructions import Instructions
from workers.config import AgentConfig
from workers.control import ControlPlane
from workers.errors import ToolError
from workers.events import Author, Emit, Event, for_prompt


@dataclass
class ToolContext:
    session_id: str
    sandbox: Sandbox
    control: ControlPlane
    author: Author
    repo: RepoSpec
    config: AgentConfig
    publish: Emit
    """The session's event sink; `emit` stamps what goes into it with this prompt."""
    depth: int = 0
    prompt_id: int | None = None
    attempt: int = 1
    instructions: Instructions = field(default_factory=Instructions)
    """AGENTS.md and the skills found for this run (filled when the run starts)."""
    base: Callable[[], str] | None = None
    """The base commit the pull request is compared against, once the sandbox's sync with
    the base tip has ended (the "before" of the repo's pages)."""

    async def emit(self, event: Event) -> None:
        """Publish an event of this prompt's run attempt."""
        await for_prompt(self.publish, self.prompt_id, self.attempt)(event)


@dataclass(frozen=True)
class Finished:
    """What `finish` hands the runner: the pull request's body and title."""

    summary: str
    title: str = ""


@dataclass(frozen=True)
class ToolOutput:
    text: str
    is_error: bool = False
    exit_code: int | None = None
    finished: Finished | None = None
    """Set by `finish`: the run ends after this turn's tool calls."""
    images: tuple[ImagePart, ...] = ()
    """Images shown to the model with the result (a screenshot), where the model sees images."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[ToolContext, Any], Awaitable[ToolOutput]]
    writes: bool = False
    """Writes to the workspace: waits for the git sync (see the `before_tool` hooks)."""

    def spec(self) -> ToolSpec:
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        return ToolSpec(name=self.name, description=self.description, parameters=schema)

    def parse(self, arguments: dict[str, Any]) -> BaseModel:
        if "_error" in arguments:
            raise ToolError(f"{self.name}: {arguments['_error']}")
        try:
            return self.args.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ToolError(f"{self.name}: invalid arguments ({problems})") from exc
