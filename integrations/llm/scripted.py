"""A deterministic model: plays a fixed script of turns. For demos, benchmarks and tests.

`NIGHTSHIFT_MODEL=scripted:echo` (built in) or `scripted:/path/script.json`, where the file
holds `{"turns": [{"text": "...", "tool_calls": [{"name": "...", "arguments": {...}}]}]}`.
Strings may contain `{prompt}` (the newest user prompt) and `{slug}` (a file-name-safe form
of it). Add `?latency_ms=N` to wait before each turn and `&chunk=N` to stream text N
characters at a time. The turn played is the number of assistant turns since the newest user
prompt, so follow-ups start the script again.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from integrations.llm.base import ModelNotConfigured
from integrations.llm.types import (
    ChatMessage,
    Completion,
    StreamItem,
    TextChunk,
    ToolCallRecord,
    ToolSpec,
)

BUILTIN_SCRIPTS: dict[str, list[dict[str, Any]]] = {
    "echo": [
        {
            "text": "Looking at the repository first.",
            "tool_calls": [{"name": "list_files", "arguments": {"path": "."}}],
        },
        {
            "text": "Writing the request down and checking the tree.",
            "tool_calls": [
                {
                    "name": "write_file",
                    "arguments": {"path": "NIGHTSHIFT.md", "content": "# Request\n\n{prompt}\n"},
                },
                {"name": "run", "arguments": {"command": "git status --short"}},
            ],
        },
        {
            "text": "Done.",
            "tool_calls": [
                {
                    "name": "finish",
                    "arguments": {"summary": "Recorded the request in NIGHTSHIFT.md."},
                }
            ],
        },
    ],
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "request"


def _fill(value: Any, prompt: str) -> Any:
    if isinstance(value, str):
        return value.replace("{prompt}", prompt).replace("{slug}", _slug(prompt))
    if isinstance(value, list):
        return [_fill(v, prompt) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, prompt) for k, v in value.items()}
    return value


class ScriptedModel:
    def __init__(self, spec: str) -> None:
        source, _, query = spec.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        self.name = f"scripted:{source}"
        self.latency = float(params.get("latency_ms", "0")) / 1000
        self.chunk = max(1, int(params.get("chunk", "16")))
        if source in BUILTIN_SCRIPTS:
            self.turns = BUILTIN_SCRIPTS[source]
        else:
            path = Path(source)
            if not path.is_file():
                raise ModelNotConfigured(
                    f"scripted model {source!r} is neither a built-in "
                    f"({', '.join(BUILTIN_SCRIPTS)}) nor a readable JSON file"
                )
            self.turns = json.loads(path.read_text())["turns"]

    async def aclose(self) -> None:
        return None

    async def stream(
        self, system: str, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[StreamItem]:
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        prompt = messages[last_user].text if last_user >= 0 else ""
        index = sum(1 for m in messages[last_user + 1 :] if m.role == "assistant")
        if self.latency:
            await asyncio.sleep(self.latency)
        if index >= len(self.turns):
            turn: dict[str, Any] = {"text": "Nothing left in the script."}
        else:
            turn = _fill(self.turns[index], prompt)
        text = str(turn.get("text", ""))
        for start in range(0, len(text), self.chunk):
            yield TextChunk(text[start : start + self.chunk])
        calls = [
            ToolCallRecord(id=f"call_{index}_{n}", name=c["name"], arguments=c.get("arguments", {}))
            for n, c in enumerate(turn.get("tool_calls", []))
        ]
        yield Completion(
            ChatMessage(role="assistant", text=text, tool_calls=calls),
            input_tokens=sum(len(m.text) for m in messages) // 4,
            output_tokens=len(text) // 4 + 1,
            stop_reason="tool_use" if calls else "end_turn",
        )
