"""Sandbox backends, picked by name (`NIGHTSHIFT_SANDBOX`): bwrap, gvisor, modal, fake."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from images.sandboxes.base import SandboxBackend, SandboxUnavailable
from images.sandboxes.egress import EgressProxy
from images.sandboxes.egress_policy import parse_private_hosts, parse_upstream

BACKENDS = ("bwrap", "gvisor", "modal", "fake")


@dataclass(frozen=True)
class SandboxConfig:
    """Backend options beyond the limits (which travel with each SandboxSpec)."""

    egress_ports: tuple[int, ...] | None = (80, 443)
    """Ports the egress proxy lets sandboxes reach; None allows any port."""
    egress_private_hosts: str = ""
    """`host[:port],...` the egress proxy may reach on private addresses (egress_policy)."""
    egress_upstream_proxy: str = ""
    """`http://host:port` the egress proxy chains public destinations through; "": none."""
    runsc_platform: str = "ptrace"
    modal_app: str = "nightshift"
    modal_cpu: float = 1.0
    modal_token_id: str | None = None
    modal_token_secret: str | None = None
    modal_environment: str | None = None
    modal_base_image: str = ""
    """Registry image repos without a declared environment are built on; "": debian_slim."""
    snapshot_ttl_s: int = 14 * 24 * 3600
    """How long a provider keeps a snapshot (Modal's `ttl`); local ones go by `collect_snapshots`."""
    sandbox_uid: int = 65600
    """Host uid (and gid) of sandboxed commands when the server runs as root; it must be no
    one else's (`environment.check_sandbox_uid`, default `environment.DEFAULT_HOST_UID`)."""


def make_backend(name: str, state_dir: Path, config: SandboxConfig | None = None) -> SandboxBackend:
    """The backend called `name`; its state (sandboxes, snapshots) lives under `state_dir`."""
    config = config or SandboxConfig()
    if name == "bwrap":
        from images.sandboxes.bwrap import BwrapBackend
        from images.sandboxes.environment import default_owner

        return BwrapBackend(
            state_dir,
            owner=default_owner(config.sandbox_uid),
            egress=_egress_proxy(config),
        )
    if name == "gvisor":
        from images.sandboxes.environment import default_owner
        from images.sandboxes.gvisor import GvisorBackend

        return GvisorBackend(
            state_dir,
            owner=default_owner(config.sandbox_uid),
            platform=config.runsc_platform,
            egress=_egress_proxy(config),
        )
    if name == "modal":
        from images.sandboxes.modal import ModalBackend

        return ModalBackend(config)
    if name == "fake":
        from images.sandboxes.fake import FakeBackend

        return FakeBackend()
    raise SandboxUnavailable(
        f"sandbox backend {name!r} is not known; choose one of {', '.join(BACKENDS)}"
    )


def _egress_proxy(config: SandboxConfig) -> EgressProxy:
    """The egress proxy of a local backend (its thread starts with the first allowlist)."""
    url = config.egress_upstream_proxy.strip()
    return EgressProxy(
        ports=config.egress_ports,
        private_hosts=parse_private_hosts(config.egress_private_hosts),
        upstream=parse_upstream(url) if url else None,
    )
