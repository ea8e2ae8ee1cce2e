"""Any OpenAI-compatible chat-completions endpoint, through the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai

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


def _to_openai(
    system: str, messages: list[ChatMessage], images: bool = False
) -> list[dict[str, Any]]:
    """Chat messages; a tool message cannot hold images, so those of a turn's tool results
    follow its last tool message as one user message (or, for a model that cannot see
    images, their notes are added to the tool result)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}]
    shown: list[dict[str, Any]] = []
    recent = with_images(messages) if images else set()

    def flush() -> None:
        if shown:
            out.append({"role": "user", "content": list(shown)})
            shown.clear()

    for m in repair_history(messages):
        if m.role != "tool":
            flush()
        if m.role == "tool":
            text = m.text
            for image in m.images:
                if m.tool_call_id in recent:
                    shown.append(
                        {"type": "text", "text": f"{image.note} (tool call {m.tool_call_id}):"}
                    )
                    url = f"data:{image.media_type};base64,{image.data}"
                    shown.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    text += f"\n{image.note}"
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": text})
        elif m.role == "assistant":
            item: dict[str, Any] = {"role": "assistant", "content": m.text or None}
            if m.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in m.tool_calls
                ]
            out.append(item)
        else:
            out.append({"role": "user", "content": m.text})
    flush()
    return out


def _parse_arguments(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {"_raw": raw, "_error": "arguments were not valid JSON"}
    return value if isinstance(value, dict) else {"_raw": raw}


def _cached(usage: Any) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    return int(getattr(details, "cached_tokens", 0) or 0)


def new_client(api_key: str | None, base_url: str | None, timeout: float) -> openai.AsyncOpenAI:
    """An SDK client (slow to build: share it, see `ModelPool`); retries are the loop's."""
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)


class OpenAIChatModel:
    """Streams chat completions with tool calls; the agent loop owns retries.

    Given a `client`, it shares it (a pool's, closed by the pool); without one it builds its
    own from `api_key`/`base_url`/`timeout` and closes it in `aclose`.
    """

    def __init__(
        self,
        model: str,
        *,
        client: openai.AsyncOpenAI | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 300.0,
        stream: bool = True,
        images: bool | None = None,
    ) -> None:
        self.name = f"openai:{model}"
        self._model = model
        self._images = accepts_images("openai", model, images)
        self._stream = stream
        self._owned = client is None
        self._client = client or new_client(api_key, base_url, timeout)

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client requests go through (shared by a pool's OpenAI models)."""
        return self._client

    async def aclose(self) -> None:
        if self._owned:
            await self._client.close()

    async def stream(
        self, system: str, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[StreamItem]:
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage_in = usage_out = cached = 0
        finish = ""
        request: dict[str, Any] = {
            "model": self._model,
            "messages": _to_openai(system, messages, self._images),
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ],
        }
        try:
            if not self._stream:
                response = await self._client.chat.completions.create(**request)
                choice = response.choices[0]
                if choice.message.content:
                    text.append(choice.message.content)
                    yield TextChunk(choice.message.content)
                for index, tc in enumerate(choice.message.tool_calls or []):
                    function = getattr(tc, "function", None)
                    calls[index] = {
                        "id": tc.id,
                        "name": function.name if function else "",
                        "args": function.arguments if function else "",
                    }
                finish = choice.finish_reason or ""
                if response.usage is not None:
                    usage_in = response.usage.prompt_tokens or 0
                    usage_out = response.usage.completion_tokens or 0
                    cached = _cached(response.usage)
            else:
                stream = await self._client.chat.completions.create(
                    **request, stream=True, stream_options={"include_usage": True}
                )
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage_in = chunk.usage.prompt_tokens or 0
                        usage_out = chunk.usage.completion_tokens or 0
                        cached = _cached(chunk.usage)
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta.content:
                            text.append(delta.content)
                            yield TextChunk(delta.content)
                        for tc in delta.tool_calls or []:
                            slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                            if tc.id:
                                slot["id"] = tc.id
                            if tc.function is not None:
                                slot["name"] += tc.function.name or ""
                                slot["args"] += tc.function.arguments or ""
                        if choice.finish_reason:
                            finish = choice.finish_reason
        except openai.APIStatusError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                raise ModelTransientError(
                    f"{exc.status_code} from model endpoint: {exc.message}",
                    retry_after_seconds(exc.response.headers),
                ) from exc
            if getattr(exc, "code", None) == "context_length_exceeded":
                raise ModelContextOverflow(
                    f"{exc.status_code} from model endpoint: {exc.message}"
                ) from exc
            raise ModelFatalError(f"{exc.status_code} from model endpoint: {exc.message}") from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise ModelTransientError(f"model endpoint unreachable: {exc}") from exc
        message = ChatMessage(
            role="assistant",
            text="".join(text),
            tool_calls=[
                ToolCallRecord(
                    id=slot["id"] or f"call_{index}",
                    name=slot["name"],
                    arguments=_parse_arguments(slot["args"]),
                )
                for index, slot in sorted(calls.items())
            ],
        )
        yield Completion(message, usage_in, usage_out, finish, cached)
