"""The settings of sandboxes: the backend, its limits, egress, declared images and Modal.

`app.settings.Settings` inherits them; read them from there (`get_settings()`), never from
this class alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from app.settings_integrations import IntegrationSettings, env_alias

SESSION = "{session}"
"""In NIGHTSHIFT_IDE_ORIGIN's host: each session's IDE gets a host name of its own."""


class SandboxSettings(IntegrationSettings):
    # ---- sandboxes
    sandbox: Literal["bwrap", "gvisor", "modal", "fake"] = "bwrap"
    sandbox_memory_mb: int = Field(2048, ge=64)
    sandbox_pids: int = Field(256, ge=16)
    sandbox_cpu_seconds: int = Field(600, ge=1)
    exec_timeout: float = Field(600.0, gt=0)
    sandbox_timeout: float = Field(4 * 3600.0, gt=0)
    output_cap_bytes: int = Field(256 * 1024, ge=1024)
    sandbox_disk_mb: int = Field(10240, ge=0)
    """Disk quota per local sandbox (workspace, home, /tmp) and per snapshot; 0: none."""
    sandbox_inodes: int = Field(1_000_000, ge=1024)
    """Files and directories a local sandbox may create (with a disk quota)."""
    sandbox_uid: int = Field(65600, ge=1, lt=2**31)
    """Host uid/gid of sandboxed commands when the server runs as root; must be no one else's."""
    sandbox_egress_ports: str = "80,443"
    """Ports allowlisted hosts may be reached on, comma-separated; `*` for any."""
    egress_private_hosts: str = ""
    """`host[:port],...` allowlisted hosts may reach on private or loopback addresses (an
    internal package mirror); nothing else on private ranges becomes reachable."""
    egress_upstream_proxy: str = ""
    """`http://host:port` of an HTTP proxy the egress proxy reaches public hosts through."""
    runsc_platform: Literal["ptrace", "kvm"] = "ptrace"
    desktop: bool = False
    """NIGHTSHIFT_DESKTOP=1: a session's page may open its sandbox's desktop (Xvfb + x11vnc)."""
    ide: bool = False
    """NIGHTSHIFT_IDE=1: a session's page may open VS Code (code-server) in its sandbox."""
    ide_command: str = "code-server"
    """The code-server program as the sandbox finds it (`make ide` puts it in /usr/local/bin)."""
    ide_port: int = Field(8001, ge=1, le=65535)
    """The IDE's own listener: code-server's pages never run on the API's origin."""
    ide_origin: str = ""
    """The IDE listener's public origin (`https://ide.example.com`); "": the API's scheme and
    host on NIGHTSHIFT_IDE_PORT. A host name of its own is safer: browsers share cookies
    between the ports of one host. `https://{session}.ide.example.com` gives each session's
    IDE an origin of its own (a wildcard name and certificate)."""
    ide_idle_seconds: float = Field(900.0, gt=0)
    """Seconds a desktop or IDE runs with no one viewing it before it is stopped."""
    registry_auth: Path | None = None
    """A containers auth.json skopeo reads to pull declared images; never enters a sandbox."""
    image_max_mb: int = Field(8192, ge=1)
    """Largest declared image (its layers, compressed) a build will pull."""
    snapshot_max_age_days: float = Field(14.0, gt=0)
    """Local snapshots older than this are garbage-collected; Modal's expire after it."""
    modal_app: str = "nightshift"
    modal_cpu: float = Field(1.0, gt=0)
    modal_token_id: SecretStr | None = Field(None, validation_alias=env_alias("MODAL_TOKEN_ID"))
    modal_token_secret: SecretStr | None = Field(
        None, validation_alias=env_alias("MODAL_TOKEN_SECRET")
    )
    modal_environment: str | None = Field(None, validation_alias=env_alias("MODAL_ENVIRONMENT"))
    modal_base_image: str = ""
    """Registry image Modal builds repos on when they declare none; "": Modal's debian_slim."""

    @field_validator("ide_origin")
    @classmethod
    def _an_origin(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return value
        if SESSION in value and not re.fullmatch(r"https?://\{session\}\.[^{}]+", value):
            raise ValueError(
                "NIGHTSHIFT_IDE_ORIGIN may hold {session} once, as the first label of its host "
                "(https://{session}.ide.example.com)"
            )
        try:
            parts = urlsplit(value.replace(SESSION, "session"))
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"NIGHTSHIFT_IDE_ORIGIN {value!r} is not a URL: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ValueError(
                "NIGHTSHIFT_IDE_ORIGIN must be an origin: http(s)://host[:port], no path"
            )
        return value
