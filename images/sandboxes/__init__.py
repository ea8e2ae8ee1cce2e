"""Sandbox backends, picked by name (`NIGHTSHIFT_SANDBOX`)."""

from __future__ import annotations

from pathlib import Path

from images.sandboxes.base import SandboxBackend, SandboxUnavailable


def make_backend(name: str, state_dir: Path) -> SandboxBackend:
    """The backend called `name`; its state (sandboxes, snapshots) lives under `state_dir`."""
    if name == "bwrap":
        from images.sandboxes.local import BwrapBackend, default_owner

        return BwrapBackend(state_dir, owner=default_owner())
    if name == "fake":
        from images.sandboxes.fake import FakeBackend

        return FakeBackend()
    raise SandboxUnavailable(f"sandbox backend {name!r} is not available in this build")
