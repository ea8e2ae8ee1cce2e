"""A git host whose fetches a test can hold: the real local forge (git repositories on this
machine) behind a gate, so a test can act while a sandbox is still catching up with the base
branch."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from integrations.forge.local import LocalForge


class GatedForge:
    kind = "local"

    def __init__(self) -> None:
        self.inner = LocalForge()
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        """Set once a fetch is waiting at the closed gate."""

    async def fetch(self, url: str, branch: str, mirror: Path) -> str:
        if not self.gate.is_set():
            self.held.set()
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        return await self.inner.fetch(url, branch, mirror)

    async def tip(self, url: str, branch: str) -> str:
        return await self.inner.tip(url, branch)

    async def clone(self, url: str, branch: str, dest: Path) -> str:
        return await self.inner.clone(url, branch, dest)

    async def push_bundle(
        self, url: str, bundle: Path, branch: str, expected_old: str | None
    ) -> str:
        return await self.inner.push_bundle(url, bundle, branch, expected_old)

    async def diff(self, url: str, base: str, head: str) -> str:
        return await self.inner.diff(url, base, head)
