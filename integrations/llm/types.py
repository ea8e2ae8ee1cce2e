"""Provider-neutral conversation types shared by every model adapter and by session events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field


class ToolCallRecord(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    """One turn of the conversation, in a provider-neutral shape."""

    role: Literal["user", "assistant", "tool"]
    text: str = ""
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    tool_call_id: str | None = None
    is_error: bool = False


class ToolSpec(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class TextChunk:
    """A piece of assistant text as it streams in."""

    text: str


@dataclass(frozen=True)
class Completion:
    """The end of one model turn: the whole assistant message and what it cost."""

    message: ChatMessage
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str = ""
    cached_tokens: int = 0
    """Input tokens the provider served from its prompt cache (a part of `input_tokens`)."""


StreamItem = TextChunk | Completion


def repair_history(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Make a history acceptable to strict providers after an interrupted turn.

    Every assistant tool call gets a result (a stop can cut one off) and results whose call is
    unknown are dropped.
    """
    out: list[ChatMessage] = []
    pending: list[str] = []

    def close_pending() -> None:
        for call_id in pending:
            out.append(
                ChatMessage(
                    role="tool",
                    text="(interrupted: no result)",
                    tool_call_id=call_id,
                    is_error=True,
                )
            )
        pending.clear()

    for m in messages:
        if m.role == "tool":
            if m.tool_call_id in pending:
                pending.remove(m.tool_call_id)
                out.append(m)
            continue
        close_pending()
        out.append(m)
        if m.role == "assistant":
            pending.extend(c.id for c in m.tool_calls)
    close_pending()
    return out
