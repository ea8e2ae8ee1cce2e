"""Settings: one pydantic-settings class, read from the environment (and `.env`).

Nightshift's own variables carry the `NIGHTSHIFT_` prefix; provider credentials keep the names
their SDKs use (`OPENAI_API_KEY`, `GITHUB_APP_ID`, `SLACK_BOT_TOKEN`, ...).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from images.sandboxes.base import Limits
from integrations.llm import ModelSettings
from workers.config import AgentConfig


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NIGHTSHIFT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # ---- core
    data_dir: Path = Path(".nightshift")
    database_url: str | None = None
    """Control DB; defaults to SQLite in the data dir. Postgres: postgresql+psycopg://..."""
    auth: Literal["token", "local"] = "token"
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    """Where people reach the web viewer (links in events, Slack and PRs)."""
    broker_url: str | None = None

    # ---- agent
    model: str | None = None
    model_stream: bool = True
    max_steps: int = Field(60, ge=1)
    token_budget: int = Field(2_000_000, ge=1000)
    model_retries: int = Field(5, ge=0)
    idle_seconds: float = Field(0.0, ge=0)
    max_prompt_chars: int = Field(100_000, ge=1)
    max_spawn_depth: int = Field(2, ge=0)
    lease_ttl: float = Field(30.0, ge=1)
    """Seconds a runner's lease lasts without a heartbeat; a dead worker's session resumes after it."""

    # ---- sandboxes
    sandbox: Literal["bwrap", "gvisor", "modal", "fake"] = "bwrap"
    sandbox_memory_mb: int = Field(2048, ge=64)
    sandbox_pids: int = Field(256, ge=16)
    sandbox_cpu_seconds: int = Field(600, ge=1)
    exec_timeout: float = Field(600.0, gt=0)
    sandbox_timeout: float = Field(4 * 3600.0, gt=0)
    output_cap_bytes: int = Field(256 * 1024, ge=1024)

    # ---- images, warm pool and schedule

    # ---- GitHub

    # ---- Slack

    # ---- distributed mode (Celery, Redis, PostgreSQL)

    # ---- model providers (names their SDKs use)
    openai_api_key: str | None = Field(None, validation_alias=_alias("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_alias("OPENAI_BASE_URL"))
    anthropic_api_key: str | None = Field(None, validation_alias=_alias("ANTHROPIC_API_KEY"))
    anthropic_base_url: str | None = Field(None, validation_alias=_alias("ANTHROPIC_BASE_URL"))

    @model_validator(mode="after")
    def _local_auth_only_on_loopback(self) -> Settings:
        if self.auth == "local" and not _is_loopback(self.host):
            raise ValueError(
                f"NIGHTSHIFT_AUTH=local serves everyone as the local user; refusing to bind "
                f"{self.host}. Use NIGHTSHIFT_AUTH=token (API tokens) on a shared address."
            )
        return self

    @property
    def control_db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'control.db'}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def limits(self) -> Limits:
        return Limits(
            memory_mb=self.sandbox_memory_mb,
            pids=self.sandbox_pids,
            cpu_seconds=self.sandbox_cpu_seconds,
            exec_timeout_s=self.exec_timeout,
            sandbox_timeout_s=self.sandbox_timeout,
            output_cap_bytes=self.output_cap_bytes,
        )

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            model=ModelSettings(
                model=self.model,
                openai_api_key=self.openai_api_key,
                openai_base_url=self.openai_base_url,
                anthropic_api_key=self.anthropic_api_key,
                anthropic_base_url=self.anthropic_base_url,
                stream=self.model_stream,
            ),
            max_steps=self.max_steps,
            token_budget=self.token_budget,
            model_retries=self.model_retries,
            max_spawn_depth=self.max_spawn_depth,
            idle_s=self.idle_seconds,
            lease_ttl_s=self.lease_ttl,
            heartbeat_s=max(0.2, self.lease_ttl / 6),
            public_url=self.base_url,
        )

    def secret_values(self) -> list[str]:
        """Every configured credential, for redaction."""
        return [v for v in (self.openai_api_key, self.anthropic_api_key) if v]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
