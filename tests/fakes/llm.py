"""Fake model providers: an OpenAI-compatible chat-completions server and an Anthropic
Messages server, real HTTP on 127.0.0.1, driven through the official SDKs.

Scripts are keyed by a substring of the newest user prompt; the turn played is the number of
assistant turns since that prompt (so concurrent sessions stay deterministic). Failures
(429/500) can be injected before the next answer. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class Call:
    name: str
    arguments: dict[str, Any]


@dataclass
class Turn:
    text: str = ""
    calls: list[Call] = field(default_factory=list)
    gate: threading.Event | None = None
    """The answer waits until the test sets this."""
    delay: float = 0.0
    chunk: int = 8
    pause: threading.Event | None = None
    """When set, a streamed answer stops after `pause_after` text chunks until the test sets it."""
    pause_after: int = 1

    @staticmethod
    def tool(name: str, text: str = "", **arguments: Any) -> Turn:
        return Turn(text=text, calls=[Call(name, arguments)])


@dataclass
class Failure:
    status: int
    retry_after: str | None = "0"


class ScriptBook:
    def __init__(self) -> None:
        self.scripts: dict[str, list[Turn]] = {}
        self.failures: list[Failure] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.peers: list[str] = []
        """The client's `host:port` of each request: one TCP connection reused shows as one."""
        self.lock = threading.Lock()
        self.started = threading.Event()
        """Set whenever a request arrives (tests wait on it to act mid-run)."""
        self.context_window: int | None = None
        """When set, requests estimated (4 characters a token) above it are refused with the
        provider's real error, and usage reports the estimate."""
        self.refusals = 0
        self.cached_tokens = 0
        """Input tokens each answer reports as served from the provider's prompt cache."""

    def script(self, key: str, *turns: Turn) -> None:
        self.scripts[key] = list(turns)

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = "0") -> None:
        self.failures.extend(Failure(status, retry_after) for _ in range(times))

    def pick(self, latest_user: str, assistant_turns: int) -> Turn:
        if latest_user.startswith(SUMMARY_REQUEST):
            return Turn(text=_summary(latest_user))
        keys = sorted((k for k in self.scripts if k in latest_user), key=len, reverse=True)
        if not keys:
            return Turn(text=f"no script matches {latest_user[:60]!r}")
        turns = self.scripts[keys[0]]
        if assistant_turns >= len(turns):
            return Turn(
                text="(script exhausted)", calls=[Call("finish", {"summary": "script exhausted"})]
            )
        return turns[assistant_turns]

    def tokens(self, body: dict[str, Any]) -> int:
        return len(json.dumps([body.get("system", ""), body["messages"]])) // 4

    def overflow(self, body: dict[str, Any], kind: str) -> JSONResponse | None:
        if self.context_window is None:
            return None
        used = self.tokens(body)
        if used <= self.context_window:
            return None
        with self.lock:
            self.refusals += 1
        if kind == "anthropic":
            return JSONResponse(
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"prompt is too long: {used} tokens > {self.context_window} maximum",
                    },
                },
                status_code=400,
            )
        return JSONResponse(
            {
                "error": {
                    "message": f"This model's maximum context length is {self.context_window} "
                    f"tokens. However, your messages resulted in {used} tokens. Please reduce "
                    "the length of the messages.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            status_code=400,
        )

    def usage_in(self, body: dict[str, Any]) -> int:
        return self.tokens(body) if self.context_window is not None else 100

    def record(
        self, body: dict[str, Any], headers: dict[str, str], peer: str = ""
    ) -> Failure | None:
        with self.lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.peers.append(peer)
            self.started.set()
            return self.failures.pop(0) if self.failures else None


SUMMARY_REQUEST = "Your conversation is about to be shortened"
RECORD_PREFIX = "(Earlier turns were compacted"
COMPACTED = re.compile(r"compacted to fit the context window: (\d+) model turns")


def _summary(request: str) -> str:
    """What a model would write when asked to compact: the task and every path it touched."""
    task = request.partition("The task:\n")[2].partition("\n\nThe transcript")[0]
    paths = sorted(set(re.findall(r'"path": "([^"]+)"', request)))
    return f"Task: {task}\nFiles touched: {', '.join(paths) or 'none'}\nOpen problems: none"


def _compacted_turns(texts: list[str]) -> int:
    """Turns a compaction record stands for (only records, not transcripts quoting one)."""
    return sum(
        int(m.group(1)) for t in texts if t.startswith(RECORD_PREFIX) and (m := COMPACTED.search(t))
    )


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else ""


async def _hold(turn: Turn, chunk_index: int) -> None:
    if turn.pause is not None and chunk_index == turn.pause_after:
        while not turn.pause.is_set():
            await asyncio.sleep(0.01)


async def _wait(turn: Turn) -> None:
    if turn.delay:
        await asyncio.sleep(turn.delay)
    if turn.gate is not None:
        while not turn.gate.is_set():
            await asyncio.sleep(0.01)


def _error(failure: Failure, kind: str) -> JSONResponse:
    headers = {"retry-after": failure.retry_after} if failure.retry_after is not None else {}
    if kind == "anthropic":
        body: dict[str, Any] = {
            "type": "error",
            "error": {
                "type": "rate_limit_error" if failure.status == 429 else "api_error",
                "message": f"injected {failure.status}",
            },
        }
    else:
        body = {
            "error": {"message": f"injected {failure.status}", "type": "server_error", "code": None}
        }
    return JSONResponse(body, status_code=failure.status, headers=headers)


# ---------------------------------------------------------------- OpenAI


def _openai_position(messages: list[dict[str, Any]]) -> tuple[str, int]:
    def text(m: dict[str, Any]) -> str:
        content = m.get("content") or ""
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content)
        return str(content)

    def shows(m: dict[str, Any]) -> bool:  # the images a turn's tool results carry
        content = m.get("content")
        return isinstance(content, list) and any(p.get("type") == "image_url" for p in content)

    last_user = max(
        (
            i
            for i, m in enumerate(messages)
            if m["role"] == "user" and not text(m).startswith(RECORD_PREFIX) and not shows(m)
        ),
        default=-1,
    )
    prompt = text(messages[last_user]) if last_user >= 0 else ""
    after = messages[last_user + 1 :]
    turns = sum(1 for m in after if m["role"] == "assistant")
    return prompt, turns + _compacted_turns([text(m) for m in after])


def openai_app(book: ScriptBook) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        failure = book.record(body, dict(request.headers), _peer(request))
        if failure:
            return _error(failure, "openai")
        if (refused := book.overflow(body, "openai")) is not None:
            return refused
        prompt, index = _openai_position(body["messages"])
        turn = book.pick(prompt, index)
        await _wait(turn)
        cid = f"chatcmpl-{uuid.uuid4().hex[:8]}"
        created = int(time.time())
        model = body["model"]
        calls: list[dict[str, Any]] = [
            {
                "id": f"call_{uuid.uuid4().hex[:8]}",
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in turn.calls
        ]
        finish = "tool_calls" if calls else "stop"
        usage_in = book.usage_in(body)
        usage = {
            "prompt_tokens": usage_in,
            "completion_tokens": 20,
            "total_tokens": usage_in + 20,
            "prompt_tokens_details": {"cached_tokens": book.cached_tokens},
        }
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
            if calls:
                message["tool_calls"] = calls
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(data)}\n\n"

        async def stream() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for n, start in enumerate(range(0, len(turn.text), turn.chunk)):
                await _hold(turn, n)
                yield chunk({"content": turn.text[start : start + turn.chunk]})
            for i, call in enumerate(calls):
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
                args = call["function"]["arguments"]
                for start in range(0, len(args), 10):
                    yield chunk(
                        {
                            "tool_calls": [
                                {"index": i, "function": {"arguments": args[start : start + 10]}}
                            ]
                        }
                    )
            yield chunk({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


# ---------------------------------------------------------------- Anthropic


def _anthropic_position(messages: list[dict[str, Any]]) -> tuple[str, int]:
    def texts(m: dict[str, Any]) -> list[str]:
        content = m["content"]
        if isinstance(content, str):
            return [content]
        return [b["text"] for b in content if b.get("type") == "text"]

    last_user = max(
        (i for i, m in enumerate(messages) if m["role"] == "user" and texts(m)), default=-1
    )
    prompt = " ".join(texts(messages[last_user])) if last_user >= 0 else ""
    turns = sum(1 for m in messages[last_user + 1 :] if m["role"] == "assistant")
    return prompt, turns + _compacted_turns(texts(messages[last_user]))


def anthropic_app(book: ScriptBook) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request) -> Any:
        body = await request.json()
        failure = book.record(body, dict(request.headers), _peer(request))
        if failure:
            return _error(failure, "anthropic")
        if (refused := book.overflow(body, "anthropic")) is not None:
            return refused
        prompt, index = _anthropic_position(body["messages"])
        turn = book.pick(prompt, index)
        await _wait(turn)
        mid = f"msg_{uuid.uuid4().hex[:10]}"
        blocks: list[dict[str, Any]] = []
        if turn.text:
            blocks.append({"type": "text", "text": turn.text})
        for c in turn.calls:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:8]}",
                    "name": c.name,
                    "input": c.arguments,
                }
            )
        stop = "tool_use" if turn.calls else "end_turn"
        if not body.get("stream"):
            return {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": book.usage_in(body) - book.cached_tokens,
                    "output_tokens": 20,
                    "cache_read_input_tokens": book.cached_tokens,
                },
            }

        def sse(kind: str, data: dict[str, Any]) -> str:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

        async def stream() -> AsyncIterator[str]:
            yield sse(
                "message_start",
                {
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": book.usage_in(body) - book.cached_tokens,
                            "output_tokens": 1,
                            "cache_read_input_tokens": book.cached_tokens,
                        },
                    }
                },
            )
            for i, block in enumerate(blocks):
                if block["type"] == "text":
                    yield sse(
                        "content_block_start",
                        {"index": i, "content_block": {"type": "text", "text": ""}},
                    )
                    for n, start in enumerate(range(0, len(block["text"]), turn.chunk)):
                        await _hold(turn, n)
                        yield sse(
                            "content_block_delta",
                            {
                                "index": i,
                                "delta": {
                                    "type": "text_delta",
                                    "text": block["text"][start : start + turn.chunk],
                                },
                            },
                        )
                else:
                    yield sse(
                        "content_block_start",
                        {
                            "index": i,
                            "content_block": {
                                "type": "tool_use",
                                "id": block["id"],
                                "name": block["name"],
                                "input": {},
                            },
                        },
                    )
                    raw = json.dumps(block["input"])
                    for start in range(0, len(raw), 10):
                        yield sse(
                            "content_block_delta",
                            {
                                "index": i,
                                "delta": {
                                    "type": "input_json_delta",
                                    "partial_json": raw[start : start + 10],
                                },
                            },
                        )
                yield sse("content_block_stop", {"index": i})
            yield sse(
                "message_delta",
                {
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": 20},
                },
            )
            yield sse("message_stop", {})

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app
