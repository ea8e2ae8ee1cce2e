"""Model adapters through the official SDKs against fake servers over real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from integrations.llm import ModelSettings, make_model
from integrations.llm.base import ModelFatalError, ModelNotConfigured, ModelTransientError
from integrations.llm.types import (
    ChatMessage,
    Completion,
    TextChunk,
    ToolCallRecord,
    ToolSpec,
    repair_history,
)
from tests.fakes.llm import Call, ScriptBook, Turn

TOOLS = [
    ToolSpec(
        name="write_file",
        description="write",
        parameters={"type": "object", "properties": {"path": {"type": "string"}}},
    )
]


async def _collect(model, messages):  # type: ignore[no-untyped-def]
    chunks, completion = [], None
    try:
        async for item in model.stream("system text", messages, TOOLS):
            if isinstance(item, TextChunk):
                chunks.append(item.text)
            else:
                assert isinstance(item, Completion)
                completion = item
    finally:
        await model.aclose()
    return chunks, completion


def _openai(book: ScriptBook, stream: bool = True):  # type: ignore[no-untyped-def]
    return make_model(
        ModelSettings(
            model="openai:fake",
            openai_api_key="sk-test-123456789012345678",
            openai_base_url=book.url,
            stream=stream,
        )
    )  # type: ignore[attr-defined]


def _anthropic(book: ScriptBook, stream: bool = True):  # type: ignore[no-untyped-def]
    return make_model(
        ModelSettings(
            model="anthropic:fake",
            anthropic_api_key="sk-ant-test-1234567890123",
            anthropic_base_url=book.url,
            stream=stream,
        )
    )  # type: ignore[attr-defined]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_text_and_tool_calls_round_trip(
    provider: str, stream: bool, openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    book = openai_fake if provider == "openai" else anthropic_fake
    model = _openai(book, stream) if provider == "openai" else _anthropic(book, stream)
    book.script(
        "make a file",
        Turn(
            text="Writing the file now, carefully.", calls=[Call("write_file", {"path": "a.txt"})]
        ),
    )
    chunks, completion = asyncio.run(
        _collect(model, [ChatMessage(role="user", text="make a file")])
    )
    assert "".join(chunks) == "Writing the file now, carefully."
    if stream:
        assert len(chunks) > 1  # it really streamed
    assert completion.message.text == "Writing the file now, carefully."
    assert [(c.name, c.arguments) for c in completion.message.tool_calls] == [
        ("write_file", {"path": "a.txt"})
    ]
    assert completion.input_tokens == 100 and completion.output_tokens == 20
    request = book.requests[-1]
    assert request["model"] == "fake"
    if provider == "openai":
        assert request["messages"][0] == {"role": "system", "content": "system text"}
        assert request["tools"][0]["function"]["name"] == "write_file"
        assert book.headers[-1]["authorization"] == "Bearer sk-test-123456789012345678"
    else:
        assert request["system"] == "system text"
        assert request["tools"][0]["input_schema"]["properties"]["path"]["type"] == "string"
        headers = book.headers[-1]
        sent_key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        assert sent_key == "sk-ant-test-1234567890123"
        assert headers["anthropic-version"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_history_with_tool_results_is_sent_in_provider_shape(
    provider: str, openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    book = openai_fake if provider == "openai" else anthropic_fake
    model = _openai(book) if provider == "openai" else _anthropic(book)
    book.script("continue", Turn(text="ok"))
    history = [
        ChatMessage(role="user", text="continue"),
        ChatMessage(
            role="assistant",
            text="",
            tool_calls=[ToolCallRecord(id="c1", name="write_file", arguments={"path": "x"})],
        ),
        ChatMessage(role="tool", text="wrote x", tool_call_id="c1"),
    ]
    asyncio.run(_collect(model, history))
    sent = book.requests[-1]["messages"]
    if provider == "openai":
        assert sent[2]["tool_calls"][0]["id"] == "c1" and sent[3] == {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "wrote x",
        }
    else:
        assert sent[1]["content"][0] == {
            "type": "tool_use",
            "id": "c1",
            "name": "write_file",
            "input": {"path": "x"},
        }
        assert sent[2]["role"] == "user" and sent[2]["content"][0]["tool_use_id"] == "c1"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_429_and_5xx_are_transient_with_retry_after(
    provider: str, openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    book = openai_fake if provider == "openai" else anthropic_fake
    model = _openai(book) if provider == "openai" else _anthropic(book)
    book.fail_next(429, retry_after="7")
    with pytest.raises(ModelTransientError) as info:
        asyncio.run(_collect(model, [ChatMessage(role="user", text="hi")]))
    assert info.value.retry_after == 7.0 and "429" in str(info.value)
    model = _openai(book) if provider == "openai" else _anthropic(book)
    book.fail_next(503, retry_after=None)
    with pytest.raises(ModelTransientError) as info:
        asyncio.run(_collect(model, [ChatMessage(role="user", text="hi")]))
    assert info.value.retry_after is None and "503" in str(info.value)
    model = _openai(book) if provider == "openai" else _anthropic(book)
    book.fail_next(401)
    with pytest.raises(ModelFatalError, match="401"):
        asyncio.run(_collect(model, [ChatMessage(role="user", text="hi")]))


def test_missing_configuration_names_the_variables() -> None:
    with pytest.raises(
        ModelNotConfigured, match="NIGHTSHIFT_MODEL=openai:<model> with OPENAI_API_KEY"
    ):
        make_model(ModelSettings(model=None))
    with pytest.raises(ModelNotConfigured, match="needs OPENAI_API_KEY"):
        make_model(ModelSettings(model="openai:gpt-4.1"))
    with pytest.raises(ModelNotConfigured, match="needs ANTHROPIC_API_KEY"):
        make_model(ModelSettings(model="anthropic:claude"))
    with pytest.raises(ModelNotConfigured, match="unknown provider 'llama'"):
        make_model(ModelSettings(model="llama:7b"))
    with pytest.raises(ModelNotConfigured, match="names no model"):
        make_model(ModelSettings(model="openai"))


def test_scripted_model_replays_turns_per_prompt() -> None:
    model = make_model(ModelSettings(model="scripted:echo?chunk=4"))
    history = [ChatMessage(role="user", text="add docs")]
    chunks, first = asyncio.run(_collect(model, history))
    assert "".join(chunks) == first.message.text and len(chunks) > 1
    assert first.message.tool_calls[0].name == "list_files"
    history += [
        first.message,
        ChatMessage(role="tool", text="README.md", tool_call_id=first.message.tool_calls[0].id),
    ]
    _, second = asyncio.run(_collect(model, history))
    assert second.message.tool_calls[0].arguments["content"] == "# Request\n\nadd docs\n"


def test_repair_history_closes_interrupted_tool_calls() -> None:
    history = [
        ChatMessage(role="user", text="go"),
        ChatMessage(
            role="assistant",
            tool_calls=[ToolCallRecord(id="a", name="run"), ToolCallRecord(id="b", name="run")],
        ),
        ChatMessage(role="tool", text="done a", tool_call_id="a"),
        ChatMessage(role="tool", text="stray", tool_call_id="zzz"),
        ChatMessage(role="user", text="next"),
    ]
    repaired = repair_history(history)
    assert [(m.role, m.tool_call_id) for m in repaired] == [
        ("user", None),
        ("assistant", None),
        ("tool", "a"),
        ("tool", "b"),
        ("user", None),
    ]
    assert repaired[3].is_error and "interrupted" in repaired[3].text
