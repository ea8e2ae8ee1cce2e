"""The model port: stream one assistant turn from a provider-neutral conversation.

Errors form a small tree so the agent loop can decide what to retry:

    ModelError
    ├── ModelNotConfigured   no model or credentials: says exactly what to set
    ├── ModelTransientError  429 / 5xx / connection trouble: retry after `retry_after`
    └── ModelFatalError      anything retrying will not fix (401, 400, ...)
        └── ModelContextOverflow  the conversation no longer fits the model's window
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from integrations.errors import IntegrationsError
from integrations.llm.types import ChatMessage, StreamItem, ToolSpec


class ModelError(IntegrationsError):
    pass


class ModelNotConfigured(ModelError):
    pass


class ModelTransientError(ModelError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelFatalError(ModelError):
    pass


class ModelContextOverflow(ModelFatalError):
    """The provider refused the request as longer than its context window (OpenAI's
    `context_length_exceeded`, Anthropic's "prompt is too long"): compact, then retry."""


class ModelClient(Protocol):
    """A chat model that can call tools."""

    name: str

    def stream(
        self, system: str, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[StreamItem]:
        """Yield text chunks as they arrive, then exactly one `Completion`."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def retry_after_seconds(headers: object) -> float | None:
    """Read `retry-after-ms` / `retry-after` (seconds) from a response's headers."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for key, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(key)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None
