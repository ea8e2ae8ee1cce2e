"""Model providers behind one port (`base.ModelClient`)."""

from __future__ import annotations

from dataclasses import dataclass

from integrations.llm.base import ModelClient, ModelNotConfigured


@dataclass(frozen=True)
class ModelSettings:
    """What a model needs, taken from the environment by the control plane's settings."""

    model: str | None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    timeout: float = 300.0
    stream: bool = True
    """Stream tokens; turn off for endpoints that cannot stream tool calls."""
    images: bool | None = None
    """Send images (screenshots) to the model; None: the known-models table decides."""


def make_model(settings: ModelSettings) -> ModelClient:
    """Build the configured model client, or say exactly which variables are missing."""
    spec = (settings.model or "").strip()
    if not spec:
        raise ModelNotConfigured(
            "no model is configured: set NIGHTSHIFT_MODEL=openai:<model> with OPENAI_API_KEY "
            "(and OPENAI_BASE_URL for any OpenAI-compatible endpoint), or "
            "NIGHTSHIFT_MODEL=anthropic:<model> with ANTHROPIC_API_KEY"
        )
    provider, _, name = spec.partition(":")
    if provider == "scripted":
        from integrations.llm.scripted import ScriptedModel

        return ScriptedModel(name or "echo")
    if not name:
        raise ModelNotConfigured(
            f"NIGHTSHIFT_MODEL={spec!r} names no model: use <provider>:<model>, "
            "e.g. openai:gpt-4.1 or anthropic:claude-sonnet-4-5"
        )
    if provider == "openai":
        if not settings.openai_api_key:
            raise ModelNotConfigured(
                f"NIGHTSHIFT_MODEL={spec} needs OPENAI_API_KEY "
                "(and OPENAI_BASE_URL for an endpoint other than api.openai.com)"
            )
        from integrations.llm.openai_chat import OpenAIChatModel

        return OpenAIChatModel(
            name,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout=settings.timeout,
            stream=settings.stream,
            images=settings.images,
        )
    if provider == "anthropic":
        if not settings.anthropic_api_key:
            raise ModelNotConfigured(
                f"NIGHTSHIFT_MODEL={spec} needs ANTHROPIC_API_KEY "
                "(and ANTHROPIC_BASE_URL for an endpoint other than api.anthropic.com)"
            )
        from integrations.llm.anthropic_messages import AnthropicModel

        return AnthropicModel(
            name,
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            timeout=settings.timeout,
            stream=settings.stream,
            images=settings.images,
        )
    raise ModelNotConfigured(
        f"NIGHTSHIFT_MODEL={spec!r}: unknown provider {provider!r}; "
        "use openai:<model>, anthropic:<model> or scripted:<script>"
    )
