"""Images on this host: a read-only directory per (repo, commit, spec) holding a fresh clone.

Layout: `<root>/<repo-slug>/<image-id>/{root/workspace, root/home, meta.json}`. An image is
complete once `meta.json` exists (written last, then the directory is renamed into place).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from images.sandboxes.base import ImageRef
from images.sandboxes.overlay import chown_tree
from images.spec import RepoSpec
from integrations.forge.base import Forge


class ImageStore:
    def __init__(
        self, root: Path, backend: str, runtime: str, owner: tuple[int, int] | None
    ) -> None:
        self.root = root
        self.backend = backend
        self.runtime = runtime
        self.owner = owner
        self._locks: dict[str, asyncio.Lock] = {}

    def images(self, spec: RepoSpec) -> list[ImageRef]:
        """Complete images of a repo, newest first."""
        found = []
        for meta in (self.root / spec.slug()).glob("*/meta.json"):
            try:
                found.append(ImageRef(**json.loads(meta.read_text())))
            except (ValueError, TypeError):
                continue
        return sorted(found, key=lambda i: i.built_at, reverse=True)

    def latest(self, spec: RepoSpec) -> ImageRef | None:
        for image in self.images(spec):
            if image.runtime == self.runtime and image.spec_hash == spec.image_hash():
                return image
        return None

    async def ensure(self, spec: RepoSpec, forge: Forge) -> tuple[ImageRef, bool]:
        """The image of the base tip; cloned now (True) when there is none yet."""
        lock = self._locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            tip = await forge.tip(spec.url, spec.base)
            for image in self.images(spec):
                if (
                    image.sha == tip
                    and image.runtime == self.runtime
                    and image.spec_hash == spec.image_hash()
                ):
                    return image, False
            return await self._build(spec, forge), True

    async def _build(self, spec: RepoSpec, forge: Forge) -> ImageRef:
        image_id = f"img-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        final = self.root / spec.slug() / image_id
        staging = self.root / spec.slug() / f".{image_id}.partial"
        staging.mkdir(parents=True)
        try:
            (staging / "root" / "home").mkdir(parents=True)
            sha = await forge.clone(spec.url, spec.base, staging / "root" / "workspace")
            await asyncio.to_thread(chown_tree, staging / "root", self.owner)
            ref = ImageRef(
                id=image_id,
                repo=spec.name,
                sha=sha,
                backend=self.backend,
                location=str(final),
                runtime=self.runtime,
                built_at=time.time(),
                spec_hash=spec.image_hash(),
            )
            (staging / "meta.json").write_text(json.dumps(asdict(ref)))
            staging.rename(final)
            return ref
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
