"""Image builds: a fresh clone on the host, then set-up and warm commands in a build sandbox.

The clone happens outside any sandbox, through the forge port (credentials stay on the host).
The repository's `setup` commands (install dependencies, build) and `warm` commands (run the
test suite once to fill caches) run inside a sandbox started from that clone, with the spec's
environment and egress allowlist. What they wrote is folded into the clone, and the result
becomes a read-only image directory stamped with repo, commit, built_at, spec hash and the
backend's runtime version.

Builds are single-flight per repo (a lease row in the control DB, so two schedulers never
build one repo at once); an unchanged base tip and spec is skipped after one `git fetch`; a
failed build keeps the previous image and records its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from images.devcontainer import DevcontainerError
from images.environments import (
    base_environment,
    declared,
    devcontainer_of,
    environment_digest,
    recorded_files,
    uncommitted_spec_warning,
)
from images.layers import clean_partials, remove_tree, tree_size
from images.local_build import build_local
from images.mirror import Mirrors
from images.oci_store import OciStore
from images.registry import ImageRecord, ImageRegistry, Trigger
from images.remote_build import build_remote, remote_images
from images.sandboxes.base import (
    ImageRef,
    Limits,
    SandboxBackend,
    SandboxError,
)
from images.sandboxes.overlay import chown_tree
from images.setup import BuildError, BuildLog, Progress
from images.spec import SPEC_FILE, RepoSpec, SpecFileError
from images.spec_file import read_spec_file
from integrations.forge.base import Forge, ForgeError

log = logging.getLogger("nightshift.images")

BuildOutcome = Literal["built", "skipped", "busy", "failed"]
COLD_MIN_AGE_S = 600.0


@dataclass
class BuildResult:
    repo: str
    outcome: BuildOutcome
    message: str
    image: ImageRecord | None = None
    """The image built, the current one (skipped), or the failed attempt with its log."""
    ms: int = 0
    warnings: list[str] = field(default_factory=list)
    """What the user should know although the build went on (an uncommitted spec file, a
    devcontainer.json set aside)."""


class ImageBuilder:
    """Builds images of one backend into `root/<repo-slug>/<image-id>/`."""

    def __init__(
        self,
        registry: ImageRegistry,
        backend: SandboxBackend,
        root: Path,
        mirrors: Mirrors,
        forge_for: Callable[[RepoSpec], Forge],
        limits: Limits,
        owner: tuple[int, int] | None,
        *,
        command_timeout: float = 1800.0,
        lock_ttl: float = 120.0,
        oci: OciStore | None = None,
        on_built: Callable[[RepoSpec, ImageRecord], None] | None = None,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.root = root
        self.mirrors = mirrors
        self.forge_for = forge_for
        self.limits = limits
        self.owner = owner
        self.command_timeout = command_timeout
        self.lock_ttl = lock_ttl
        self.oci = oci  # where declared images are pulled and unpacked (None: refused)
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._guard = threading.Lock()
        self._building: set[str] = set()
        self.on_built = on_built
        """Called (on the builder's loop) when a new image is ready, e.g. to refresh pools."""

    # ------------------------------------------------------------ building

    async def build(
        self,
        spec: RepoSpec,
        *,
        trigger: Trigger = "manual",
        force: bool = False,
        progress: Progress | None = None,
    ) -> BuildResult:
        """Build `spec`'s image at its base tip unless the newest one is current."""
        started = time.monotonic()
        with self._guard:
            mine = spec.name in self._building  # the lease is re-entrant for its holder
            self._building.add(spec.name)
        if mine:
            return BuildResult(spec.name, "busy", f"a build of {spec.name} is already running")
        try:
            return await self._build_leased(spec, trigger, force, progress, started)
        finally:
            with self._guard:
                self._building.discard(spec.name)

    async def _build_leased(
        self,
        spec: RepoSpec,
        trigger: Trigger,
        force: bool,
        progress: Progress | None,
        started: float,
    ) -> BuildResult:
        got = await asyncio.to_thread(
            self.registry.acquire_lock, spec.name, self.holder, self.lock_ttl
        )
        if not got:
            holder = await asyncio.to_thread(self.registry.lock_holder, spec.name)
            who = f" (held by {holder.holder})" if holder is not None else ""
            return BuildResult(spec.name, "busy", f"another build of {spec.name} is running{who}")
        heartbeat = asyncio.create_task(self._keep_lock(spec.name))
        try:
            result = await self._build_locked(spec, trigger, force, progress or (lambda _m: None))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            # Shielded: it must happen even while this task is being cancelled (and should it
            # not, the lease runs out after `lock_ttl`).
            await asyncio.shield(
                asyncio.to_thread(self.registry.release_lock, spec.name, self.holder)
            )
        result.ms = int((time.monotonic() - started) * 1000)
        return result

    async def _save(self, record: ImageRecord, **values: object) -> None:
        await asyncio.to_thread(functools.partial(self.registry.save, record, **values))

    async def _keep_lock(self, repo: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            try:
                await asyncio.to_thread(self.registry.renew_lock, repo, self.holder, self.lock_ttl)
            except Exception:  # the DB may be restarting; the lease covers a missed beat
                log.warning("renewing the build lock of %s failed", repo, exc_info=True)

    async def _build_locked(
        self, spec: RepoSpec, trigger: Trigger, force: bool, say: Progress
    ) -> BuildResult:
        forge = self.forge_for(spec)
        await asyncio.to_thread(self.registry.interrupt_stale, spec.name)
        await asyncio.to_thread(clean_partials, self.root / spec.slug(), COLD_MIN_AGE_S)
        say("fetching the base branch")
        try:
            tip = await self.mirrors.update(spec, forge)
        except ForgeError as exc:
            return await asyncio.to_thread(
                self._failed_early, spec, trigger, None, None, f"fetching failed: {exc}"
            )
        try:
            file = await self.mirrors.spec_file(spec, tip)
            dev = (
                await self.mirrors.devcontainer(spec, tip)
                if spec.with_file(file).devcontainer
                else None
            )
        except (SpecFileError, DevcontainerError, ForgeError) as exc:
            return await asyncio.to_thread(self._failed_early, spec, trigger, tip, None, str(exc))
        effective = declared(spec.with_file(file), dev)
        spec_hash = effective.image_hash()
        try:  # a declared image's tag may have moved: only its digest is looked up, not pulled
            digest = await asyncio.to_thread(environment_digest, effective, self.backend, self.oci)
        except BuildError as exc:
            return await asyncio.to_thread(
                self._failed_early, spec, trigger, tip, spec_hash, str(exc)
            )
        if not force:
            existing = await asyncio.to_thread(self.registry.find, spec.name, tip, spec_hash)
            if existing and existing.status == "ready" and existing.environment_digest == digest:
                return BuildResult(
                    spec.name,
                    "skipped",
                    f"image {existing.id} is current ({tip[:10]}, spec {spec_hash})",
                    existing,
                )
            if (
                existing is not None
                and existing.status == "failed"
                and trigger in ("session", "warm")
            ):
                return BuildResult(
                    spec.name,
                    "skipped",
                    f"the last build of {tip[:10]} failed ({existing.error}); the schedule or "
                    "`nightshift images build --force` retries it",
                    existing,
                )
        record = self.registry.new_record(spec.name, trigger)
        record.sha, record.spec_hash = tip, spec_hash
        record.file_spec = recorded_files(file, dev)
        record = await asyncio.to_thread(self.registry.add, record)
        await asyncio.to_thread(
            self.registry.renew_lock, spec.name, self.holder, self.lock_ttl, record.id
        )
        return await self._build_image(spec, record, forge, say)

    def _failed_early(
        self, spec: RepoSpec, trigger: str, sha: str | None, spec_hash: str | None, error: str
    ) -> BuildResult:
        record = self.registry.new_record(spec.name, trigger, status="failed")
        record.sha, record.spec_hash = sha, spec_hash
        record.error, record.log = error[:2000], error + "\n"
        record.finished_at, record.duration_ms = time.time(), 0
        self.registry.add(record)
        self.registry.prune_failed(spec.name)
        return BuildResult(spec.name, "failed", error, record)

    async def _build_image(
        self, spec: RepoSpec, record: ImageRecord, forge: Forge, say: Progress
    ) -> BuildResult:
        started = time.monotonic()
        build_log = BuildLog()
        warnings: list[str] = []
        repo_dir = self.root / spec.slug()
        staging = repo_dir / f".{record.id}.partial"
        final = repo_dir / record.id
        try:
            staging.mkdir(parents=True)
            root = staging / "root"
            (root / "home").mkdir(parents=True)
            say("cloning")
            sha = await forge.clone(spec.url, spec.base, root / "workspace")
            build_log.line(f"cloned {spec.name} ({spec.base}) at {sha}")
            file = await asyncio.to_thread(read_spec_file, root / "workspace")
            dev = await asyncio.to_thread(devcontainer_of, spec.with_file(file), root / "workspace")
            effective = declared(spec.with_file(file), dev)
            warning = uncommitted_spec_warning(spec, committed=file is not None)
            if warning is not None:
                build_log.line(warning)
                warnings.append(warning)
            remote = remote_images(self.backend)
            if remote is None:  # a remote backend builds the declared environment itself
                env = await asyncio.to_thread(
                    base_environment, effective, self.backend, self.oci, staging, build_log
                )
                if env is not None:
                    env_size = await asyncio.to_thread(tree_size, Path(env.rootfs))
                    await self._save(
                        record, environment_digest=env.digest, environment_size_bytes=env_size
                    )
            else:
                build_log.line(f"environment: {effective.environment()}")
            if sha != record.sha or effective.image_hash() != record.spec_hash:
                # The tip moved between the fetch and the clone: stamp what was cloned.
                await self._save(
                    record,
                    sha=sha,
                    spec_hash=effective.image_hash(),
                    file_spec=recorded_files(file, dev),
                )
            if file is not None:
                build_log.line(f"{SPEC_FILE}: {json.dumps(file.model_dump(exclude_none=True))}")
            await asyncio.to_thread(chown_tree, root, self.owner)
            location = str(final)
            if remote is not None:
                steps = (self.limits, self.command_timeout, build_log, say)
                location = await build_remote(remote, record, effective, staging, *steps)
            elif effective.setup or effective.warm:
                steps = (self.limits, self.command_timeout, build_log, say)
                await build_local(self.backend, record, effective, staging, *steps)
            say("saving the image")
            built_at = time.time()
            stamp = ImageRef(
                id=record.id,
                repo=spec.name,
                sha=record.sha or sha,
                backend=self.backend.name,
                location=str(final),
                runtime=self.registry.runtime,
                built_at=built_at,
                spec_hash=record.spec_hash or "",
            )
            size = None  # a provider's image: its size is not known here
            if remote is None:
                (staging / "meta.json").write_text(json.dumps(asdict(stamp)))
                size = await asyncio.to_thread(tree_size, staging)
                staging.rename(final)
                os.chmod(final, 0o555)  # noqa: S103  (read-only: nothing adds to an image)
        except (
            SandboxError,
            ForgeError,
            SpecFileError,
            DevcontainerError,
            BuildError,
            OSError,
        ) as exc:
            build_log.line(f"error: {exc}")
            await asyncio.to_thread(remove_tree, staging)
            await self._save(
                record,
                status="failed",
                error=str(exc)[:2000],
                log=build_log.text(),
                finished_at=time.time(),
                duration_ms=int((time.monotonic() - started) * 1000),
            )
            await asyncio.to_thread(self.registry.prune_failed, spec.name)
            log.warning("image build of %s failed: %s", spec.name, exc)
            return BuildResult(spec.name, "failed", str(exc), record)
        except BaseException:
            # Cancelled (the process is stopping): not a failure of the repo, so no record.
            with contextlib.suppress(Exception):
                remove_tree(staging)
                self.registry.delete(record.id)
            raise
        on_disk = f", {size / 1e6:.1f} MB on disk" if size is not None else ""
        build_log.line(
            f"image {record.id} ready in {int((time.monotonic() - started) * 1000)} ms{on_disk}"
        )
        await self._save(
            record,
            status="ready",
            location=location,
            size_bytes=size,
            log=build_log.text(),
            finished_at=built_at,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        say("ready")
        if self.on_built is not None:
            try:
                self.on_built(spec, record)
            except Exception:
                log.exception("an on_built callback failed for %s", record.id)
        return BuildResult(
            spec.name, "built", f"built {record.id} at {record.sha}", record, warnings=warnings
        )

    # ------------------------------------------------------------ collection

    async def collect(self, repo: str, keep: int, in_use: Callable[[], set[str]]) -> list[str]:
        """Delete this host's images of `repo` beyond the newest `keep` that nothing uses
        (`keep` 0: all of them, for a removed repo). `in_use` is asked again once an image
        is marked collected: a start that chose it meanwhile keeps it (and a start that
        chooses after the mark sees it and chooses again)."""
        candidates = await asyncio.to_thread(self.registry.collectable, repo, keep, in_use())
        collected = []
        for record in candidates:
            if record.status == "cold" and time.time() - (record.finished_at or 0) < COLD_MIN_AGE_S:
                continue
            status = record.status
            await self._save(record, status="collected")
            if record.id in in_use():
                await self._save(record, status=status)
                continue
            if record.location and Path(record.location).resolve().is_relative_to(
                self.root.resolve()
            ):
                await asyncio.to_thread(remove_tree, Path(record.location))
            collected.append(record.id)
        if self.oci is not None:  # and the declared images no image of this host runs on
            await asyncio.to_thread(self.oci.collect, self.registry.environment_digests())
        return collected
