"""Settings of several API processes sharing one control DB (`serve --processes N`, or N
`serve` processes on several hosts): kept apart so `app/settings.py` stays one screenful of
each concern; `Settings` inherits them."""

from __future__ import annotations

from pydantic import Field, SecretStr

from app.settings_sandbox import SandboxSettings


class ProcessSettings(SandboxSettings):
    peer_url: str | None = None
    """Where the other API processes reach this one (e.g. `http://10.0.0.5:8000`); setting it
    turns session ownership on: each session is owned by one process, the others forward."""
    peer_secret: SecretStr | None = Field(None, min_length=16)
    """Shared by the API processes: signs forwarded requests (default: the worker token)."""
    owner_ttl: float = Field(15.0, ge=1)
    """Seconds a process's ownership of its sessions lasts unless its heartbeat renews it."""
