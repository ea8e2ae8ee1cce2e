"""Anthropic's Messages API through the official `anthropic` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic

from integrations.llm.base import (
    ModelContextOverflow,
    ModelFatalError,
    ModelTransientError,
    retry_after_seconds,
)
from integrations.llm.types import (
    ChatMessage,
    Completion,
    StreamItem,
    TextChunk,
    ToolCallRecord,
    ToolSpec,
    accepts_images,
    repair_history,
    with_images,
)


def _tool_content(m: ChatMessage, recent: set[str]) -> str | list[dict[str, Any]]:
    """A tool result's content: its text, with its images as image blocks (or their notes,
    for a model that cannot see images)."""
    text = m.text or "(no output)"
    if not m.images:
        return text
    if m.tool_call_id not in recent:
        return "\n".join([text, *(i.note for i in m.images)])
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for image in m.images:
        source = {"type": "base64", "media_type": image.media_type, "data": image.data}
        blocks.append({"type": "image", "source": source})
    return blocks


def _to_anthropic(messages: list[ChatMessage], images: bool = False) -> list[dict[str, Any]]:
    """Anthropic wants tool results as user turns, and consecutive same-role turns merged."""
    out: list[dict[str, Any]] = []
    recent = with_images(messages) if images else set()
    for m in repair_history(messages):
        blocks: list[dict[str, Any]]
        if m.role == "tool":
            role = "user"
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id,
                    "content": _tool_content(m, recent),
                    "is_error": m.is_error,
                }
            ]
        elif m.role == "assistant":
            role = "assistant"
            blocks = [{"type": "text", "text": m.text}] if m.text else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
            if not blocks:
                blocks = [{"type": "text", "text": "(no text)"}]
        else:
            role = "user"
            blocks = [{"type": "text", "text": m.text}]
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def new_client(
    api_key: str | None, base_url: str | None, timeout: float
) -> anthropic.AsyncAnthropic:
    """An SDK client (slow to build: share it, see `ModelPool`); retries are the loop's."""
    return anthropic.AsyncAnthropic(
        api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
    )


class AnthropicModel:
    """Given a `client`, it shares it (a pool's, closed by the pool); without one it builds its
    own from `api_key`/`base_url`/`timeout` and closes it in `aclose`."""

    def __init__(
        self,
        model: str,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int = 8192,
        timeout: float = 300.0,
        stream: bool = True,
        images: bool | None = None,
    ) -> None:
        self.name = f"anthropic:{model}"
        self._stream = stream
        self._model = model
        self._images = accepts_images("anthropic", model, images)
        self._max_tokens = max_tokens
        self._owned = client is None
        self._client = client or new_client(api_key, base_url, timeout)

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK client requests go through (shared by a pool's Anthropic models)."""
        return self._client

    async def aclose(self) -> None:
        if self._owned:
            await self._client.close()

    async def stream(
        self, system: str, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[StreamItem]:
        request: dict[str, Any] = {
            "model": self._model,
            "max_tokens": self._max_tokens,
            "system": system,
            "messages": _to_anthropic(messages, self._images),
            "tools": [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ],
        }
        try:
            if self._stream:
                async with self._client.messages.stream(**request) as stream:
                    async for text in stream.text_stream:
                        if text:
                            yield TextChunk(text)
                    final = await stream.get_final_message()
            else:
                final = await self._client.messages.create(**request)
                for block in final.content:
                    if block.type == "text" and block.text:
                        yield TextChunk(block.text)
        except anthropic.APIStatusError as exc:
            if exc.status_code in (429, 529) or exc.status_code >= 500:
                raise ModelTransientError(
                    f"{exc.status_code} from model endpoint: {exc.message}",
                    retry_after_seconds(exc.response.headers),
                ) from exc
            if exc.status_code == 400 and "prompt is too long" in str(exc.message):
                raise ModelContextOverflow(
                    f"{exc.status_code} from model endpoint: {exc.message}"
                ) from exc
            raise ModelFatalError(f"{exc.status_code} from model endpoint: {exc.message}") from exc
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
            raise ModelTransientError(f"model endpoint unreachable: {exc}") from exc
        text_parts: list[str] = []
        calls: list[ToolCallRecord] = []
        for block in final.content:
            if block.type == "text":
                text_parts.append(block.text)
            elif block.type == "tool_use":
                args = block.input if isinstance(block.input, dict) else {"_raw": block.input}
                calls.append(ToolCallRecord(id=block.id, name=block.name, arguments=args))
        yield Completion(
            ChatMessage(role="assistant", text="".join(text_parts), tool_calls=calls),
            # Anthropic counts cache reads apart from `input_tokens`; ours include them.
            final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0),
            final.usage.output_tokens,
            final.stop_reason or "",
            final.usage.cache_read_input_tokens or 0,
        )
