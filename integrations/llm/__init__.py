"""Model providers behind one port (`base.ModelClient`).

An SDK client (`openai.AsyncOpenAI`, `anthropic.AsyncAnthropic`) costs tens of milliseconds to
build (TLS context, connection pool) and that work blocks the event loop, so a process builds
one per provider and settings and keeps it: `ModelPool` hands out a model per spec, all of a
provider's models sharing that one client and its warm connections, until `aclose()` at
shutdown. `make_model` builds a stand-alone model that owns its client, for one-off callers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from integrations.llm.base import ModelClient, ModelError, ModelNotConfigured

log = logging.getLogger(__name__)


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


def parse_models(text: str | None, default: str | None) -> tuple[str, ...]:
    """NIGHTSHIFT_MODELS as a tuple of specs (the first is the default); unset or empty means
    just NIGHTSHIFT_MODEL. ValueError names an entry that is not `<provider>:<model>`."""
    specs: list[str] = []
    for entry in (e.strip() for e in (text or "").split(",")):
        if not entry:
            continue
        provider, _, name = entry.partition(":")
        if not provider or (not name and provider != "scripted"):
            raise ValueError(
                f"NIGHTSHIFT_MODELS entry {entry!r}: use <provider>:<model>, "
                "e.g. openai:gpt-4.1,anthropic:claude-sonnet-4-5"
            )
        if entry not in specs:
            specs.append(entry)
    if specs:
        return tuple(specs)
    return (default.strip(),) if default and default.strip() else ()


def _split(spec: str | None) -> tuple[str, str]:
    spec = (spec or "").strip()
    if not spec:
        raise ModelNotConfigured(
            "no model is configured: set NIGHTSHIFT_MODEL=openai:<model> with OPENAI_API_KEY "
            "(and OPENAI_BASE_URL for any OpenAI-compatible endpoint), or "
            "NIGHTSHIFT_MODEL=anthropic:<model> with ANTHROPIC_API_KEY"
        )
    provider, _, name = spec.partition(":")
    if provider not in ("openai", "anthropic", "scripted"):
        raise ModelNotConfigured(
            f"NIGHTSHIFT_MODEL={spec!r}: unknown provider {provider!r}; "
            "use openai:<model>, anthropic:<model> or scripted:<script>"
        )
    if not name and provider != "scripted":
        raise ModelNotConfigured(
            f"NIGHTSHIFT_MODEL={spec!r} names no model: use <provider>:<model>, "
            "e.g. openai:gpt-4.1 or anthropic:claude-sonnet-4-5"
        )
    return provider, name


def _check_credentials(provider: str, spec: str, settings: ModelSettings) -> None:
    if provider == "openai" and not settings.openai_api_key:
        raise ModelNotConfigured(
            f"NIGHTSHIFT_MODEL={spec} needs OPENAI_API_KEY "
            "(and OPENAI_BASE_URL for an endpoint other than api.openai.com)"
        )
    if provider == "anthropic" and not settings.anthropic_api_key:
        raise ModelNotConfigured(
            f"NIGHTSHIFT_MODEL={spec} needs ANTHROPIC_API_KEY "
            "(and ANTHROPIC_BASE_URL for an endpoint other than api.anthropic.com)"
        )


def _sdk_client(provider: str, settings: ModelSettings) -> Any:
    """A new SDK client for `provider` (the slow part: once per provider and process)."""
    if provider == "openai":
        from integrations.llm import openai_chat

        return openai_chat.new_client(
            settings.openai_api_key, settings.openai_base_url, settings.timeout
        )
    from integrations.llm import anthropic_messages

    return anthropic_messages.new_client(
        settings.anthropic_api_key, settings.anthropic_base_url, settings.timeout
    )


def _build(provider: str, name: str, settings: ModelSettings, client: Any = None) -> ModelClient:
    """A model sharing `client`; with None, one that builds its own and closes it with itself."""
    if provider == "scripted":
        from integrations.llm.scripted import ScriptedModel

        return ScriptedModel(name or "echo")
    if provider == "openai":
        from integrations.llm.openai_chat import OpenAIChatModel

        return OpenAIChatModel(
            name,
            client=client,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout=settings.timeout,
            stream=settings.stream,
            images=settings.images,
        )
    from integrations.llm.anthropic_messages import AnthropicModel

    return AnthropicModel(
        name,
        client=client,
        api_key=settings.anthropic_api_key,
        base_url=settings.anthropic_base_url,
        timeout=settings.timeout,
        stream=settings.stream,
        images=settings.images,
    )


def make_model(settings: ModelSettings) -> ModelClient:
    """A stand-alone model for `settings.model` that owns its client (close it when done), or
    ModelNotConfigured saying exactly which variables are missing."""
    provider, name = _split(settings.model)
    _check_credentials(provider, str(settings.model), settings)
    return _build(provider, name, settings)


class ModelPool:
    """The process's models: one per spec, over one long-lived SDK client per provider."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._models: dict[str, ModelClient] = {}

    def get(self, spec: str | None = None) -> ModelClient:
        """The model for `spec` (None: the settings' default), built on first use."""
        spec = (spec or self.settings.model or "").strip()
        model = self._models.get(spec)
        if model is not None:
            return model
        provider, name = _split(spec)
        _check_credentials(provider, spec, self.settings)
        client = None
        if provider != "scripted":
            client = self._clients.get(provider)
            if client is None:
                client = self._clients[provider] = _sdk_client(provider, self.settings)
        model = _build(provider, name, self.settings, client)
        self._models[spec] = model
        return model

    def prepare(self, specs: tuple[str, ...] = ()) -> list[str]:
        """Build the default model and `specs` now, at process start, so no prompt pays for an
        SDK client's construction (tens of ms of blocking work). A model that cannot be built
        here (missing credentials) is left for its first prompt to report; the ones built."""
        built: list[str] = []
        for spec in (self.settings.model or "", *specs):
            if not spec.strip() or spec.strip() in built:
                continue
            try:
                self.get(spec)
            except (ModelError, ValueError, OSError) as exc:
                log.info("model %s is built on first use instead: %s", spec, exc)
                continue
            built.append(spec.strip())
        return built

    def client(self, provider: str) -> object | None:
        """The SDK client `provider`'s models share, once one was built (None before)."""
        return self._clients.get(provider)

    async def aclose(self) -> None:
        """Close every SDK client (at shutdown); a later `get` builds afresh."""
        clients, self._clients, self._models = list(self._clients.values()), {}, {}
        for client in clients:
            await client.close()
