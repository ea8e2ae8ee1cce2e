"""`ModelPool`: one long-lived SDK client per provider, reused by every model and prompt of
the process, over real HTTP to the fake providers (connection reuse is seen by the server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from integrations.llm import ModelPool, ModelSettings, make_model, parse_models
from integrations.llm.anthropic_messages import AnthropicModel
from integrations.llm.base import ModelClient, ModelNotConfigured
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage, Completion
from tests.fakes.llm import ScriptBook, Turn


def _settings(openai: ScriptBook, anthropic: ScriptBook | None = None) -> ModelSettings:
    return ModelSettings(
        model="openai:fake-model",
        openai_api_key="sk-test-123456789012345678",
        openai_base_url=openai.url,  # type: ignore[attr-defined]
        anthropic_api_key="sk-ant-test-1234567890123" if anthropic else None,
        anthropic_base_url=anthropic.url if anthropic else None,  # type: ignore[attr-defined]
    )


async def _ask(model: ModelClient, text: str) -> Completion:
    completion = None
    async for item in model.stream("system", [ChatMessage(role="user", text=text)], []):
        if isinstance(item, Completion):
            completion = item
    assert completion is not None
    return completion


def test_two_prompts_reuse_one_client_and_one_connection(openai_fake: ScriptBook) -> None:
    openai_fake.script("hello", Turn(text="hi there"))

    async def main() -> None:
        pool = ModelPool(_settings(openai_fake))
        first = pool.get()
        assert (await _ask(first, "hello one")).message.text == "hi there"
        again = pool.get("openai:fake-model")
        other = pool.get("openai:fake-mini")
        assert again is first
        assert isinstance(first, OpenAIChatModel) and isinstance(other, OpenAIChatModel)
        assert other.client is first.client is pool.client("openai")
        assert (await _ask(other, "hello two")).message.text == "hi there"
        await pool.aclose()
        assert first.client.is_closed()
        assert pool.client("openai") is None

    asyncio.run(main())
    assert [r["model"] for r in openai_fake.requests] == ["fake-model", "fake-mini"]
    # Both requests came over the same TCP connection: the client and its pool were kept.
    assert len(openai_fake.peers) == 2 and len(set(openai_fake.peers)) == 1


def test_each_provider_gets_its_own_client(
    openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    anthropic_fake.script("hello", Turn(text="bonjour"))

    async def main() -> None:
        pool = ModelPool(_settings(openai_fake, anthropic_fake))
        claude = pool.get("anthropic:fake-claude")
        assert isinstance(claude, AnthropicModel)
        assert claude.client is pool.client("anthropic")
        assert claude.client is not pool.get().client  # type: ignore[attr-defined]
        assert (await _ask(claude, "hello")).message.text == "bonjour"
        await _ask(claude, "hello again")
        await pool.aclose()

    asyncio.run(main())
    assert [r["model"] for r in anthropic_fake.requests] == ["fake-claude", "fake-claude"]
    assert len(set(anthropic_fake.peers)) == 1


def test_getting_a_pooled_model_is_cheap(openai_fake: ScriptBook) -> None:
    """Building an SDK client takes tens of milliseconds; a pooled model costs a dict lookup."""
    pool = ModelPool(_settings(openai_fake))
    pool.get()
    started = time.perf_counter()
    for _ in range(1000):
        pool.get("openai:fake-model")
    assert time.perf_counter() - started < 0.05


def test_a_models_aclose_leaves_the_shared_client_open(openai_fake: ScriptBook) -> None:
    openai_fake.script("hello", Turn(text="hi"))

    async def main() -> None:
        pool = ModelPool(_settings(openai_fake))
        model = pool.get()
        await model.aclose()  # a caller that closes its model must not break the others
        assert (await _ask(pool.get(), "hello")).message.text == "hi"
        await pool.aclose()

    asyncio.run(main())


def test_a_stand_alone_model_owns_its_client(openai_fake: ScriptBook) -> None:
    async def main() -> None:
        model = make_model(_settings(openai_fake))
        assert isinstance(model, OpenAIChatModel)
        await model.aclose()
        assert model.client.is_closed()

    asyncio.run(main())


def test_missing_credentials_are_named_per_provider(openai_fake: ScriptBook) -> None:
    pool = ModelPool(_settings(openai_fake))
    with pytest.raises(ModelNotConfigured, match="ANTHROPIC_API_KEY"):
        pool.get("anthropic:claude-sonnet-4-5")
    with pytest.raises(ModelNotConfigured, match="unknown provider"):
        pool.get("llama:7b")
    assert pool.client("anthropic") is None


def test_parse_models() -> None:
    assert parse_models("openai:a, anthropic:b ,openai:a", None) == ("openai:a", "anthropic:b")
    assert parse_models("", "openai:x") == ("openai:x",)
    assert parse_models(None, None) == ()
    assert parse_models("scripted:echo", None) == ("scripted:echo",)
    with pytest.raises(ValueError, match=r"'gpt-4\.1'"):
        parse_models("openai:a,gpt-4.1", None)
