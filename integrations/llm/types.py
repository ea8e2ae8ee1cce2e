"""Provider-neutral conversation types shared by every model adapter and by session events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field


class ToolCallRecord(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ImagePart(BaseModel):
    """An image shown to the model with a tool result (a screenshot).

    Never stored: `ChatMessage.images` is left out of every dump, so events, history and
    checkpoints keep only the text (whose `note` names where the image is kept)."""

    media_type: Literal["image/png"] = "image/png"
    data: str
    """The image, base64."""
    note: str
    """What a model that cannot see images is told instead: the image's link."""


IMAGE_MODELS = {
    "openai": (
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-4-turbo",
        "gpt-5",
        "o1",
        "o3",
        "o4",
    ),
    "anthropic": ("claude-3", "claude-sonnet-4", "claude-opus-4", "claude-haiku-4"),
}
"""Model name prefixes, per provider, of models known to accept images; any other model (and
`scripted`) gets the image's note instead, unless the operator says otherwise."""


def accepts_images(provider: str, model: str, override: bool | None = None) -> bool:
    """Whether `provider:model` is sent images: the operator's `override`, else the table."""
    if override is not None:
        return override
    return model.lower().startswith(IMAGE_MODELS.get(provider, ()))


IMAGES_SHOWN = 3
"""Only the newest few tool results keep their images in a request; older ones (already seen)
are sent as their notes, so a long run does not resend every screenshot each turn."""


def with_images(messages: list[ChatMessage], keep: int = IMAGES_SHOWN) -> set[str]:
    """The tool call ids whose images a request still carries."""
    ids = [m.tool_call_id for m in messages if m.role == "tool" and m.images and m.tool_call_id]
    return set(ids[-keep:]) if keep > 0 else set()


class ChatMessage(BaseModel):
    """One turn of the conversation, in a provider-neutral shape."""

    role: Literal["user", "assistant", "tool"]
    text: str = ""
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    tool_call_id: str | None = None
    is_error: bool = False
    images: list[ImagePart] = Field(default_factory=list, exclude=True)
    """Images of a tool result, for this run only (see `ImagePart`)."""


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
