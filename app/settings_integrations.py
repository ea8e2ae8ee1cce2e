"""The settings of the outside services Nightshift talks to as a client: GitHub and Slack.

`app.settings.Settings` inherits them; read them from there (`get_settings()`), never from
this class alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def env_alias(name: str) -> AliasChoices:
    """Read a setting from the name its SDK uses (`GITHUB_APP_ID`), in either case."""
    return AliasChoices(name, name.lower())


def _names(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))


class IntegrationSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NIGHTSHIFT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # ---- GitHub
    github_app_id: str | None = Field(None, validation_alias=env_alias("GITHUB_APP_ID"))
    github_app_private_key: SecretStr | None = Field(
        None, validation_alias=env_alias("GITHUB_APP_PRIVATE_KEY")
    )
    """The App's PEM private key itself (`\\n` escapes allowed), or set the _PATH variant."""
    github_app_private_key_path: Path | None = Field(
        None, validation_alias=env_alias("GITHUB_APP_PRIVATE_KEY_PATH")
    )
    github_client_id: str | None = Field(None, validation_alias=env_alias("GITHUB_CLIENT_ID"))
    github_client_secret: SecretStr | None = Field(
        None, validation_alias=env_alias("GITHUB_CLIENT_SECRET")
    )
    github_webhook_secret: SecretStr | None = Field(
        None, validation_alias=env_alias("GITHUB_WEBHOOK_SECRET")
    )
    github_api_url: str = Field(
        "https://api.github.com", validation_alias=env_alias("GITHUB_API_URL")
    )
    secret_keys: SecretStr | None = None
    """NIGHTSHIFT_SECRET_KEYS: comma-separated Fernet keys; the first encrypts, all decrypt."""
    pr_fallback: Literal["none", "app"] = "none"
    """NIGHTSHIFT_PR_FALLBACK: `app` opens the PR as the App when the person has not linked
    GitHub (the body names them); `none` asks them to sign in first."""
    github_issue_triggers: bool = True
    """NIGHTSHIFT_GITHUB_ISSUE_TRIGGERS: a mention of the App in an issue starts a session."""
    github_pr_followups: bool = True
    """NIGHTSHIFT_GITHUB_PR_FOLLOWUPS: a mention or a review requesting changes on a PR a
    session opened queues a follow-up in that session."""
    ci_fix_attempts: int = Field(2, ge=0, le=20)
    """NIGHTSHIFT_CI_FIX_ATTEMPTS: failing checks sent back to the session per PR (0: off)."""

    # ---- who may sign in with GitHub, and how much one person may hold open
    github_allowed_orgs: str = ""
    """NIGHTSHIFT_GITHUB_ALLOWED_ORGS: comma-separated GitHub organizations whose active
    members may sign in (a new user is created for them); checked with the person's own token."""
    github_allowed_users: str = ""
    """NIGHTSHIFT_GITHUB_ALLOWED_USERS: comma-separated GitHub logins who may sign in. With
    neither set, only people whose GitHub account is already linked may sign in."""
    max_sessions_per_user: int = Field(20, ge=1)
    """Sessions one person may have queued, starting, running or idle at once."""
    max_streams_per_user: int = Field(50, ge=1)
    """WebSocket and SSE event streams one person may hold open on one API host."""

    @property
    def allowed_orgs(self) -> tuple[str, ...]:
        return _names(self.github_allowed_orgs)

    @property
    def allowed_users(self) -> tuple[str, ...]:
        return _names(self.github_allowed_users)

    # ---- Slack
    slack_bot_token: SecretStr | None = Field(None, validation_alias=env_alias("SLACK_BOT_TOKEN"))
    """The bot token (`xoxb-...`); with the signing secret it turns the Slack bot on."""
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=env_alias("SLACK_SIGNING_SECRET")
    )
    slack_app_token: SecretStr | None = Field(None, validation_alias=env_alias("SLACK_APP_TOKEN"))
    """An app-level token (`xapp-...`, scope `connections:write`): the bot receives Slack over
    Socket Mode (no public request URL; the signing secret is then optional)."""
    slack_api_url: str = Field(
        "https://slack.com/api/", validation_alias=env_alias("SLACK_API_URL")
    )
    """Base URL of the Slack Web API (tests point it at a fake)."""
    slack_follow_ups: Literal["mentions", "thread"] = "mentions"
    """Which replies in a session's thread become follow-ups: those that mention the bot, or
    every reply in a thread the bot started."""
    slack_update_interval: float = Field(1.0, ge=0.05, le=60)
    """Seconds between two updates of one status message."""
    slack_retries: int = Field(3, ge=0, le=10)
    """Retries of a Slack Web API call on 429 (after `Retry-After`), 5xx and dropped connections."""
    classifier_model: str | None = None
    """A fast model that picks the repository of a Slack request (`openai:...`)."""
    classifier_threshold: float = Field(0.6, ge=0, le=1)
    """Below this confidence the bot asks which repository instead of guessing."""

    @model_validator(mode="after")
    def _github_complete(self) -> IntegrationSettings:
        if self.github_app_id and not (
            self.github_app_private_key or self.github_app_private_key_path
        ):
            raise ValueError(
                "GITHUB_APP_ID is set but the App's private key is not: set "
                "GITHUB_APP_PRIVATE_KEY_PATH (a .pem file) or GITHUB_APP_PRIVATE_KEY"
            )
        if self.github_app_id:
            from integrations.github.app import check_private_key

            check_private_key(self.github_private_key())
        if bool(self.github_client_id) != bool(self.github_client_secret):
            raise ValueError("set both GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET, or neither")
        if self.github_client_id and not self.secret_keys:
            raise ValueError(
                "GitHub sign-in stores people's tokens encrypted, so NIGHTSHIFT_SECRET_KEYS is "
                "required: generate a key with `nightshift github secret-key`"
            )
        if self.secret_keys:
            from app.services.crypto import parse_keys

            parse_keys(self.secret_keys.get_secret_value())
        return self

    @property
    def github_enabled(self) -> bool:
        """The GitHub forge works: the App can clone and push."""
        return bool(self.github_app_id)

    @property
    def github_oauth_enabled(self) -> bool:
        return bool(self.github_client_id and self.github_client_secret)

    def github_private_key(self) -> str:
        """The App's private key (PEM text) from the variable or the file it names."""
        if self.github_app_private_key:
            return self.github_app_private_key.get_secret_value()
        path = self.github_app_private_key_path
        if path is None:
            raise ValueError("no GitHub App private key is configured")
        try:
            return path.expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"GITHUB_APP_PRIVATE_KEY_PATH={path}: {exc.strerror}") from exc

    @model_validator(mode="after")
    def _slack_needs_both_secrets(self) -> IntegrationSettings:
        app_token = self.slack_app_token.get_secret_value() if self.slack_app_token else ""
        if app_token and not app_token.startswith("xapp-"):
            raise ValueError(
                "SLACK_APP_TOKEN must be an app-level token (xapp-...): Slack app settings, "
                "Basic Information, App-Level Tokens (scope connections:write)"
            )
        inbound = bool(self.slack_signing_secret or app_token)
        if bool(self.slack_bot_token) != inbound:
            have = (
                "SLACK_BOT_TOKEN"
                if self.slack_bot_token
                else ("SLACK_SIGNING_SECRET" if self.slack_signing_secret else "SLACK_APP_TOKEN")
            )
            missing = (
                "SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN for Socket Mode)"
                if self.slack_bot_token
                else "SLACK_BOT_TOKEN"
            )
            raise ValueError(
                f"{have} is set but {missing} is not: the Slack bot needs both "
                "(Slack app settings: OAuth & Permissions, Basic Information)"
            )
        return self

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_bot_token and (self.slack_signing_secret or self.slack_app_token))
