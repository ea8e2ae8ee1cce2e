"""Forges: where repositories live. Pick one by the repo spec's `forge` field."""

from __future__ import annotations

from integrations.forge.base import Forge, ForgeError
from integrations.forge.local import LocalForge

__all__ = ["Forge", "ForgeError", "LocalForge"]
