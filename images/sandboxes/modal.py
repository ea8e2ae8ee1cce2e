"""The Modal backend: each sandbox is a `modal.Sandbox`, driven with the async (`.aio`) API.

- Images: a repository's image is built on Modal (`declared_environment`, `start_build`, see
  `modal_images.py` and `images/remote_build.py`) and recorded by its id (`im-...`), which is
  used as is (`Image.from_id`). A cold start's bare clone is turned into a Modal image once
  (`cold_image`: the declared environment, or the default base, with the workspace copied in)
  and its id cached next to it.
- Limits: `memory` as request and limit (Modal kills past it: 137), `timeout` for the sandbox,
  `idle_timeout`, exec `timeout` (Modal reports 124), and RLIMIT_NPROC / RLIMIT_CPU set by
  `prlimit` around every command, which runs as the unprivileged `agent` via `setpriv`.
- Network: `block_network=True`, or `outbound_domain_allowlist` with the repo's hosts.
- Files: paths are resolved inside the sandbox (`realpath`) and refused when they leave
  /workspace or are not a regular file (a FIFO would hang the read), then read and written
  with `sandbox.filesystem`; `copy_out` streams a file in chunks to the host, capped.
- Snapshots: `snapshot_filesystem(timeout=300, ttl=...)`; Modal deletes them after the ttl.

No credential reaches the sandbox: no `secrets=`, and its environment is built here from the
fixed variables and the repo spec's declared ones only.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from images.sandboxes import SandboxConfig
from images.sandboxes.base import (
    ImageRef,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    SnapshotRef,
    SnapshotUnusable,
)
from images.sandboxes.modal_images import (
    default_base,
    environment_image,
    with_workspace,
)
from images.sandboxes.modal_sandbox import (
    IMAGE_CACHE,
    RUNTIME,
    ModalSandbox,
    create_kwargs,
    load_modal,
    one_line,
)

if TYPE_CHECKING:
    from images.spec import RepoSpec


class ModalBackend:
    """Sandboxes on Modal; credentials come from settings or Modal's own config."""

    name = "modal"
    owner: tuple[int, int] | None = None
    """Modal's files are not on this host."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._client: Any = None
        self._app: Any = None
        self.live: dict[str, ModalSandbox] = {}

    def enforcement(self) -> dict[str, str]:
        return {}

    def _track(self, sandbox: ModalSandbox) -> ModalSandbox:
        self.live[sandbox.id] = sandbox
        return sandbox

    def forget(self, sandbox_id: str) -> None:
        self.live.pop(sandbox_id, None)

    def runtime_version(self) -> str:
        return RUNTIME

    async def client(self) -> Any:
        modal = load_modal()
        if self._client is None:
            if self.config.modal_token_id and self.config.modal_token_secret:
                self._client = await modal.Client.from_credentials.aio(
                    self.config.modal_token_id, self.config.modal_token_secret
                )
            elif modal.config.config.get("token_id"):
                self._client = await modal.Client.from_env.aio()
            else:
                raise SandboxUnavailable(
                    "the Modal backend needs credentials: set MODAL_TOKEN_ID and "
                    "MODAL_TOKEN_SECRET (or run `modal token new`)"
                )
        return self._client

    async def app(self) -> Any:
        if self._app is None:
            modal = load_modal()
            kwargs: dict[str, Any] = {"create_if_missing": True, "client": await self.client()}
            if self.config.modal_environment:
                kwargs["environment_name"] = self.config.modal_environment
            self._app = await modal.App.lookup.aio(self.config.modal_app, **kwargs)
        return self._app

    async def image_for(self, source: ImageRef | SnapshotRef) -> Any:
        modal = load_modal()
        client = await self.client()
        if isinstance(source, SnapshotRef):
            if source.backend != self.name or source.runtime != RUNTIME:
                raise SnapshotUnusable(
                    f"snapshot {source.id} was taken by {source.runtime}, not {RUNTIME}: "
                    "start from the newest image instead"
                )
            try:
                return await modal.Image.from_id.aio(source.location, client=client)
            except modal.exception.NotFoundError:
                raise SnapshotUnusable(
                    f"snapshot {source.id} is gone from Modal (its ttl passed or it was deleted)"
                ) from None
        if source.location.startswith("im-"):
            try:
                return await modal.Image.from_id.aio(source.location, client=client)
            except modal.exception.Error as exc:
                raise SandboxError(
                    f"image {source.id} ({source.location}) is not usable on Modal: {one_line(exc)}"
                ) from exc
        return await self._build_image(source)

    async def _build_image(self, source: ImageRef) -> Any:
        """A Modal image holding the image directory's workspace; built once, id cached."""
        modal = load_modal()
        root = Path(source.location)
        cache = root / IMAGE_CACHE
        if cache.exists():
            image_id = json.loads(cache.read_text()).get("image_id", "")
            try:
                return await modal.Image.from_id.aio(image_id, client=await self.client())
            except modal.exception.NotFoundError:
                cache.unlink()
        workspace = root / "root" / "workspace"
        if not workspace.is_dir():
            raise SandboxError(f"image {source.id} has no workspace at {workspace}")
        image = with_workspace(default_base(modal, self.config.modal_base_image), workspace)
        built = await self._built(image)
        cache.write_text(json.dumps({"image_id": built.object_id, "image": source.id}))
        return built

    async def _built(self, image: Any) -> Any:
        """`image` built by Modal (layers it has already built are reused)."""
        modal = load_modal()
        try:
            return await image.build.aio(await self.app())
        except modal.exception.Error as exc:
            raise SandboxError(f"modal could not build the image: {one_line(exc)}") from exc

    def declared_environment(self, spec: RepoSpec, workspace: Path) -> Any:
        """The Modal image a build of `spec` starts from: the environment it declares (or the
        default base) with the clone at `workspace` copied to /workspace."""
        return environment_image(load_modal(), spec, workspace, self.config.modal_base_image)

    async def cold_image(self, spec: RepoSpec, image_dir: Path, image_id: str) -> None:
        """Build the Modal image a cold start of `spec` runs on (its declared environment with
        the bare clone in `image_dir`) and cache its id there, as `_build_image` reads it."""
        image = self.declared_environment(spec, image_dir / "root" / "workspace")
        built = await self._built(image)
        cache = {"image_id": built.object_id, "image": image_id}
        (image_dir / IMAGE_CACHE).write_text(json.dumps(cache))

    async def start_build(self, environment: Any, spec: SandboxSpec) -> ModalSandbox:
        """A build sandbox on `environment` (from `declared_environment`), built first."""
        return await self._create(await self._built(environment), spec)

    async def start(self, spec: SandboxSpec) -> ModalSandbox:
        return await self._create(await self.image_for(spec.source), spec)

    async def _create(self, image: Any, spec: SandboxSpec) -> ModalSandbox:
        modal = load_modal()
        kwargs = create_kwargs(spec, self.config, await self.app(), image)
        try:
            sb = await modal.Sandbox.create.aio(client=await self.client(), **kwargs)
        except modal.exception.Error as exc:
            raise SandboxError(f"modal could not create a sandbox: {one_line(exc)}") from exc
        return self._track(ModalSandbox(self, spec, sb))

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> ModalSandbox:
        """A running sandbox by id (after a worker restart)."""
        modal = load_modal()
        try:
            sb = await modal.Sandbox.from_id.aio(sandbox_id, client=await self.client())
        except modal.exception.NotFoundError:
            raise SandboxError(f"no Modal sandbox {sandbox_id}") from None
        return self._track(ModalSandbox(self, spec, sb))

    def release_stale(self) -> int:
        """Modal's sandboxes leave nothing on this host: their provider ends them."""
        return 0

    def collect_snapshots(self, older_than_s: float, keep: Collection[str] = ()) -> list[str]:
        """Modal deletes snapshots itself when their ttl passes (`snapshot_ttl_s`)."""
        return []
