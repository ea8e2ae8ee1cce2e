"""Keeping the conversation inside the model's context window.

Each model has a known window (`KNOWN_WINDOWS`, or `NIGHTSHIFT_MODEL_CONTEXT_TOKENS`). Before a
turn would pass `COMPACT_AT` of it, older tool outputs are elided first; if that is not enough,
the older turns are summarised by the model into one compact record (the task, decisions, files
touched, open problems). The prompt and the last turns stay verbatim.
"""

from __future__ import annotations

import json
import re

from integrations.llm.base import ModelClient
from integrations.llm.types import ChatMessage, Completion

COMPACT_AT = 0.8
"""Share of the window a turn may fill before the history is compacted."""
KEEP_LAST = 6
"""Messages at the end of the history that always stay verbatim."""
ELIDED = "(output elided to save context: {chars} characters; run the command again if needed)"
DEFAULT_WINDOW = 128_000

KNOWN_WINDOWS: dict[str, int] = {
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-5": 400_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-opus-4-1": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-7-sonnet": 200_000,
}

SUMMARY_PROMPT = """\
Your conversation is about to be shortened to fit your context window. Write a compact record \
of it that lets you continue the work without the transcript, under these headings: \
Task (the request, verbatim if short), Decisions, Files touched (every path you read or \
changed), Open problems, Next step. Answer with the record only; do not call tools."""


_RECORD = "(Earlier turns were compacted to fit the context window: {n} model turns summarised.)"
_RECORD_N = re.compile(r"compacted to fit the context window: (\d+) model turns")


def context_window(model_name: str, override: int | None) -> int:
    """The window of `provider:model` in tokens: the override, the table (longest matching
    prefix, so dated variants match), or a conservative default."""
    if override:
        return override
    name = model_name.partition(":")[2] or model_name
    matches = [k for k in KNOWN_WINDOWS if name.startswith(k)]
    return KNOWN_WINDOWS[max(matches, key=len)] if matches else DEFAULT_WINDOW


def estimate_tokens(system: str, messages: list[ChatMessage]) -> int:
    """A provider-neutral estimate (about four characters a token) for what was never counted."""
    chars = len(system) + sum(
        len(m.text) + sum(len(json.dumps(c.arguments)) + len(c.name) for c in m.tool_calls)
        for m in messages
    )
    return chars // 4 + 8 * len(messages)


def _head_end(messages: list[ChatMessage]) -> int:
    """Index just past the first user message (the task): it always stays verbatim."""
    for i, m in enumerate(messages):
        if m.role == "user":
            return i + 1
    return 0


def _tail_start(messages: list[ChatMessage], keep_last: int) -> int:
    """Where the verbatim tail starts, moved back so it never opens on an orphaned tool result."""
    start = max(_head_end(messages), len(messages) - keep_last)
    while start > 0 and start < len(messages) and messages[start].role == "tool":
        start -= 1
    return start


def elide_tool_outputs(
    messages: list[ChatMessage], keep_last: int = KEEP_LAST
) -> tuple[list[ChatMessage], int]:
    """Replace the text of tool results before the verbatim tail; returns the new history
    and how many were elided."""
    tail = _tail_start(messages, keep_last)
    out: list[ChatMessage] = []
    count = 0
    for i, m in enumerate(messages):
        if i < tail and m.role == "tool" and not m.text.startswith("(output elided"):
            out.append(m.model_copy(update={"text": ELIDED.format(chars=len(m.text))}))
            count += 1
        else:
            out.append(m)
    return out, count


async def summarise(
    model: ModelClient, system: str, messages: list[ChatMessage], keep_last: int = KEEP_LAST
) -> tuple[list[ChatMessage], str]:
    """Replace the turns between the task and the verbatim tail with a model-written record.

    The summary request itself carries only the (already elided) middle, so it fits.
    """
    head, tail = _head_end(messages), _tail_start(messages, keep_last)
    if tail <= head:
        return messages, ""
    middle = messages[head:tail]
    turns = sum(1 for m in middle if m.role == "assistant") + sum(
        int(found.group(1)) for m in middle if (found := _RECORD_N.search(m.text))
    )
    transcript = "\n\n".join(_render(m) for m in middle)
    task = messages[head - 1].text if head else ""
    request = [
        ChatMessage(
            role="user",
            text=f"{SUMMARY_PROMPT}\n\nThe task:\n{task}\n\nThe transcript so far:\n{transcript}",
        )
    ]
    completion: Completion | None = None
    async for item in model.stream(system, request, []):
        if isinstance(item, Completion):
            completion = item
    summary = completion.message.text.strip() if completion is not None else ""
    if not summary:
        summary = "(the model returned no summary)"
    record = ChatMessage(
        role="user",
        text=f"{_RECORD.format(n=turns)}\n{summary}",
    )
    return [*messages[:head], record, *messages[tail:]], summary


def _render(m: ChatMessage) -> str:
    if m.role == "tool":
        return f"[tool result{' (error)' if m.is_error else ''}] {m.text[:2000]}"
    calls = "".join(f"\n[call {c.name} {json.dumps(c.arguments)[:500]}]" for c in m.tool_calls)
    return f"[{m.role}] {m.text[:4000]}{calls}"


async def compact(
    model: ModelClient, system: str, messages: list[ChatMessage], budget: int, force: bool
) -> tuple[list[ChatMessage], int, str]:
    """Shrink `messages` under `budget` tokens: elide older tool outputs, then summarise the
    older turns, then elide every tool output but the newest. `force` (the provider refused
    the request) skips straight past steps that left the history as it was.

    Returns the new history, the number of outputs elided and the summary ("" when none).
    """
    out, elided = elide_tool_outputs(messages)
    summary = ""
    if estimate_tokens(system, out) > budget or (force and not elided):
        out, summary = await summarise(model, system, out)
    if estimate_tokens(system, out) > budget:
        out, more = elide_tool_outputs(out, keep_last=1)
        elided += more
    return out, elided, summary
