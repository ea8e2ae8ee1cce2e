"""Settings: one pydantic-settings class, read from the environment (and `.env`), then from
`nightshift.toml` (or the file `NIGHTSHIFT_CONFIG` names; see `app/settings_file.py`).

GitHub's and Slack's settings live in `app/settings_integrations.py`, the sandboxes' in
`app/settings_sandbox.py`; `Settings` inherits both.

Nightshift's own variables carry the `NIGHTSHIFT_` prefix; provider credentials keep the names
their SDKs use (`OPENAI_API_KEY`, `GITHUB_APP_ID`, `SLACK_BOT_TOKEN`, ...).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.settings_file import SettingsFileSource
from app.settings_integrations import env_alias
from app.settings_processes import ProcessSettings
from images.sandboxes import SandboxConfig
from images.sandboxes.base import Limits
from images.sandboxes.egress_policy import parse_private_hosts, parse_upstream
from images.spec import check_image
from integrations.llm import ModelSettings
from workers.config import AgentConfig


def reveal(value: SecretStr | None) -> str | None:
    """A credential setting's value (None or empty: not configured)."""
    return value.get_secret_value() or None if value is not None else None


FAKE_SANDBOX_ALLOWED = False
"""The test suite's switch, set by its conftest and nothing else: only there may
NIGHTSHIFT_SANDBOX=fake (which runs no commands) be chosen. Not an environment variable, so
no deployment and no process the suite starts can turn it on."""


class Settings(ProcessSettings):
    model_config = SettingsConfigDict(
        env_prefix="NIGHTSHIFT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Options, then the environment, then `nightshift.toml` (app/settings_file.py).
        file = SettingsFileSource(settings_cls)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings, file)

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

    # ---- what API users may reach on this host, and which names this server answers to
    repo_roots: str = ""
    """NIGHTSHIFT_REPO_ROOTS: directories under which API users may register local repositories
    (os.pathsep- or comma-separated). Empty: the API refuses local paths and the operator adds
    them with `nightshift repos add`; under NIGHTSHIFT_AUTH=local, the server user's home."""
    allowed_hosts: str = ""
    """NIGHTSHIFT_ALLOWED_HOSTS: host names the server answers to besides its bind address,
    `localhost`, loopback and the hosts of NIGHTSHIFT_PUBLIC_URL / NIGHTSHIFT_CONTROL_URL
    (comma-separated; `*.example.com` patterns; `*` turns the Host check off)."""

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        for name in names:
            wildcard = name.startswith("*.") and "*" not in name[2:]
            if ("*" in name and name != "*" and not wildcard) or "/" in name or " " in name:
                raise ValueError(
                    f"NIGHTSHIFT_ALLOWED_HOSTS: {name!r} is not a host name "
                    "(write `ns.example.com`, `*.example.com` or `*`, without scheme or port)"
                )
        return ",".join(names)

    admins: str = ""
    """NIGHTSHIFT_ADMINS: comma-separated Nightshift logins who may merge or close any local
    pull request (besides the session's and the PR's author)."""

    def admin_logins(self) -> frozenset[str]:
        return frozenset(n.strip().lower() for n in self.admins.split(",") if n.strip())

    def api_repo_roots(self) -> tuple[Path, ...]:
        """Directories under which a local repository may be registered over the API."""
        text = self.repo_roots.replace(os.pathsep, ",")
        roots = [Path(p.strip()).expanduser() for p in text.split(",") if p.strip()]
        if not roots and self.auth == "local":
            # The one local user of NIGHTSHIFT_AUTH=local is the operator of this machine.
            roots = [Path.home()]
        return tuple(roots)

    # ---- agent
    model: str | None = None
    models: str = ""
    """NIGHTSHIFT_MODELS: the models a session may pick, comma-separated, the first the default
    (unset: NIGHTSHIFT_MODEL alone)."""
    model_stream: bool = True
    model_images: bool | None = None  # send screenshots as images; None: known models only
    max_steps: int = Field(60, ge=1)
    token_budget: int = Field(2_000_000, ge=1000)
    model_context_tokens: int | None = Field(None, ge=2000)
    skills_dir: Path | None = None
    instructions_max_chars: int = Field(32_000, ge=1000)
    verify_attempts: int = Field(3, ge=1, le=20)
    plugins: str = ""
    model_prices: str = ""
    session_budget_usd: float | None = Field(None, gt=0)
    checkpoint_seconds: float = Field(30.0, ge=0)
    model_retries: int = Field(5, ge=0)
    idle_seconds: float = Field(0.0, ge=0)
    max_prompt_chars: int = Field(100_000, ge=1)
    max_pending_creates: int = Field(2, ge=1)
    """Session creations and follow-ups one API process takes in at once; past it, a request
    waits up to `max_pending_wait_ms` for a slot, then 503. Few: a creation in flight is a
    thread contending for the interpreter's lock with the running sessions, so more slots create
    sessions faster in a burst but answer later and delay the running sessions' events."""
    max_pending_wait_ms: int = Field(100, ge=0, le=10_000)
    max_spawn_depth: int = Field(2, ge=0)
    lease_ttl: float = Field(30.0, ge=1)
    """Seconds a runner's lease lasts without a heartbeat; a dead worker's session resumes after it."""

    # ---- pushes
    max_push_mb: int = Field(200, ge=1)
    """Megabytes the git bundle of one push may weigh; a bigger push fails naming its biggest
    files."""

    @field_validator("models")
    @classmethod
    def _models(cls, value: str) -> str:
        from integrations.llm import parse_models

        parse_models(value, None)  # a ValueError names the bad entry
        return value

    def model_choices(self) -> tuple[str, ...]:
        """The models sessions may run on; the first is the default."""
        from integrations.llm import parse_models

        return parse_models(self.models, self.model)

    @field_validator("model_prices")
    @classmethod
    def _prices(cls, value: str) -> str:
        from workers.agent.accounting import parse_prices

        parse_prices(value)  # a ValueError names the bad entry
        return value

    @field_validator("sandbox_disk_mb")
    @classmethod
    def _disk_mb(cls, value: int) -> int:
        if 0 < value < 16:
            raise ValueError("NIGHTSHIFT_SANDBOX_DISK_MB: 0 (no quota) or at least 16")
        return value

    @field_validator("sandbox_egress_ports")
    @classmethod
    def _egress_ports(cls, value: str) -> str:
        if value.strip() == "*":
            return "*"
        try:
            ports = [int(p) for p in value.split(",") if p.strip()]
        except ValueError:
            raise ValueError(
                f"NIGHTSHIFT_SANDBOX_EGRESS_PORTS: {value!r} is not a list of ports"
            ) from None
        if not ports or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"NIGHTSHIFT_SANDBOX_EGRESS_PORTS: {value!r} needs ports 1-65535")
        return ",".join(str(p) for p in ports)

    @field_validator("egress_private_hosts")
    @classmethod
    def _private_hosts(cls, value: str) -> str:
        try:
            parse_private_hosts(value)
        except ValueError as exc:
            raise ValueError(f"NIGHTSHIFT_EGRESS_PRIVATE_HOSTS: {exc}") from None
        return value

    @field_validator("egress_upstream_proxy")
    @classmethod
    def _upstream_proxy(cls, value: str) -> str:
        if value.strip():
            try:
                parse_upstream(value)
            except ValueError as exc:
                raise ValueError(f"NIGHTSHIFT_EGRESS_UPSTREAM_PROXY: {exc}") from None
        return value

    @field_validator("modal_base_image")
    @classmethod
    def _modal_base_image(cls, value: str) -> str:
        if not value.strip():
            return ""
        try:
            return check_image(value)
        except ValueError as exc:
            raise ValueError(f"NIGHTSHIFT_MODAL_BASE_IMAGE: {exc}") from None

    def sandbox_config(self) -> SandboxConfig:
        ports = self.sandbox_egress_ports
        return SandboxConfig(
            egress_ports=None if ports == "*" else tuple(int(p) for p in ports.split(",")),
            egress_private_hosts=self.egress_private_hosts,
            egress_upstream_proxy=self.egress_upstream_proxy,
            runsc_platform=self.runsc_platform,
            modal_app=self.modal_app,
            modal_cpu=self.modal_cpu,
            modal_token_id=reveal(self.modal_token_id),
            modal_token_secret=reveal(self.modal_token_secret),
            modal_environment=self.modal_environment,
            modal_base_image=self.modal_base_image,
            snapshot_ttl_s=int(self.snapshot_max_age_days * 86400),
            sandbox_uid=self.sandbox_uid,
        )

    # ---- images, warm pool and schedule
    image_interval: float = Field(1800.0, ge=0)
    """Seconds between scheduled image builds of every repo (0: no schedule)."""
    images_keep: int = Field(3, ge=1)
    """Ready images kept per repo; older ones are collected once nothing uses them."""
    image_command_timeout: float = Field(1800.0, gt=0)
    """Wall-clock seconds per set-up or warm command of an image build."""
    pool_ttl: float = Field(900.0, gt=0)
    """Seconds a shared warm-pool sandbox waits for a session before it is replaced."""
    pool_interval: float = Field(15.0, gt=0)
    """Seconds between warm-pool upkeep runs (expire, replace, top up)."""
    warm_ttl: float = Field(300.0, gt=0)
    """Seconds a sandbox warmed for a person (`POST /api/repos/{repo}/warm`) is kept for them."""
    warm_debounce: float = Field(2.0, ge=0)
    """Seconds before a failed warm-up of the same person and repo is tried again."""

    # ---- distributed mode (Celery, Redis, PostgreSQL)
    worker_token: SecretStr | None = Field(None, min_length=16)
    """Shared secret remote workers present to the API's internal routes."""
    control_url: str | None = None
    """Where workers reach the API's internal routes (default: the public URL)."""
    worker_concurrency: int = Field(32, ge=1, le=2000)
    """Sessions one `nightshift worker` process runs at once."""
    visibility_timeout: float = Field(6 * 3600.0, gt=0)
    """Seconds before Redis hands an unacknowledged task to another worker; above the longest run."""
    reap_interval: float = Field(10.0, gt=0)
    """How often the API hands sessions whose runner died to another runner."""
    reconcile_interval: float = Field(600.0, ge=1)
    """How often open pull requests are reconciled with GitHub (beat, or in-process)."""

    # ---- model providers (names their SDKs use)
    openai_api_key: SecretStr | None = Field(None, validation_alias=env_alias("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=env_alias("OPENAI_BASE_URL"))
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=env_alias("ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(None, validation_alias=env_alias("ANTHROPIC_BASE_URL"))

    @model_validator(mode="after")
    def _local_auth_only_on_loopback(self) -> Settings:
        if self.auth == "local" and not _is_loopback(self.host):
            raise ValueError(
                f"NIGHTSHIFT_AUTH=local serves everyone as the local user; refusing to bind "
                f"{self.host}. Use NIGHTSHIFT_AUTH=token (API tokens) on a shared address."
            )
        return self

    @model_validator(mode="after")
    def _fake_sandbox_only_in_tests(self) -> Settings:
        # The fake backend runs nothing: a server on it would report work it never did.
        if self.sandbox == "fake" and not FAKE_SANDBOX_ALLOWED:
            raise ValueError(
                "NIGHTSHIFT_SANDBOX=fake runs no commands and exists for the test suite only; "
                "use bwrap, gvisor or modal"
            )
        return self

    @model_validator(mode="after")
    def _no_disk_quota_on_modal(self) -> Settings:
        if self.sandbox == "modal" and self.sandbox_disk_mb > 0:
            raise ValueError(
                f"NIGHTSHIFT_SANDBOX_DISK_MB={self.sandbox_disk_mb}: the Modal backend cannot "
                "enforce a disk quota (Modal sizes sandbox disks itself); set it to 0 with "
                "NIGHTSHIFT_SANDBOX=modal"
            )
        return self

    @model_validator(mode="after")
    def _visibility_above_longest_run(self) -> Settings:
        if self.visibility_timeout <= self.sandbox_timeout:
            raise ValueError(
                f"NIGHTSHIFT_VISIBILITY_TIMEOUT ({self.visibility_timeout:.0f}s) must exceed "
                f"NIGHTSHIFT_SANDBOX_TIMEOUT ({self.sandbox_timeout:.0f}s), the longest a run "
                "can last; otherwise Redis hands a running session's task to a second worker"
            )
        return self

    @property
    def worker_control_url(self) -> str:
        return (self.control_url or self.base_url).rstrip("/")

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
            disk_mb=self.sandbox_disk_mb,
            disk_inodes=self.sandbox_inodes,
        )

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            model=ModelSettings(
                model=next(iter(self.model_choices()), None),
                openai_api_key=reveal(self.openai_api_key),
                openai_base_url=self.openai_base_url,
                anthropic_api_key=reveal(self.anthropic_api_key),
                anthropic_base_url=self.anthropic_base_url,
                stream=self.model_stream,
                images=self.model_images,
            ),
            max_steps=self.max_steps,
            token_budget=self.token_budget,
            context_tokens=self.model_context_tokens,
            skills_dir=str(self.skills_dir) if self.skills_dir else None,
            instructions_max_chars=self.instructions_max_chars,
            verify_attempts=self.verify_attempts,
            model_prices=self.model_prices,
            session_budget_usd=self.session_budget_usd,
            plugins=tuple(p.strip() for p in self.plugins.split(",") if p.strip()),
            model_retries=self.model_retries,
            max_spawn_depth=self.max_spawn_depth,
            idle_s=self.idle_seconds,
            lease_ttl_s=self.lease_ttl,
            heartbeat_s=max(0.2, self.lease_ttl / 6),
            public_url=self.base_url,
            max_push_bytes=self.max_push_mb * 1024 * 1024,
            checkpoint_s=self.checkpoint_seconds,
        )

    def secret_values(self) -> list[str]:
        """Every configured credential, for redaction: the value of each `SecretStr` setting
        (each key of a comma-separated list on its own too) and the App key its file holds."""
        values: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value().strip():
                secret = value.get_secret_value().strip()
                values.append(secret)
                if "," in secret:
                    values.extend(v.strip() for v in secret.split(",") if v.strip())
        if self.github_app_private_key is None and self.github_app_private_key_path is not None:
            # An unreadable key file is reported where the App is built.
            with contextlib.suppress(ValueError):
                values.append(self.github_private_key().strip())
        return values


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
