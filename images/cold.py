"""Cold starts: a bare clone of the base tip to start one sandbox from while a repo has no
image yet. Its `.nightshift.toml` and devcontainer.json complete the spec as a build's would,
and the sandbox runs on the environment they declare: pulled and unpacked here for a local
backend (the same size cap and one-line errors as a build), built by the provider for a
remote one (Modal)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from images.environments import base_environment, declared, devcontainer_of, recorded_files
from images.layers import remove_tree
from images.registry import ImageRecord
from images.remote_build import remote_images
from images.sandboxes.overlay import chown_tree
from images.spec import RepoSpec
from images.spec_file import read_spec_file

if TYPE_CHECKING:
    from images.builder import ImageBuilder


async def cold_clone(builder: ImageBuilder, spec: RepoSpec) -> tuple[ImageRecord, RepoSpec]:
    """A bare clone of the base tip to start one sandbox from, while no image exists.

    Returns the `cold` record and the spec as the clone's `.nightshift.toml` completes it.
    """
    forge = builder.forge_for(spec)
    record = builder.registry.new_record(spec.name, "session", status="cold", prefix="cold")
    repo_dir = builder.root / spec.slug()
    staging = repo_dir / f".{record.id}.partial"
    final = repo_dir / record.id
    try:
        root = staging / "root"
        (root / "home").mkdir(parents=True)
        sha = await forge.clone(spec.url, spec.base, root / "workspace")
        file = await asyncio.to_thread(read_spec_file, root / "workspace")
        dev = await asyncio.to_thread(devcontainer_of, spec.with_file(file), root / "workspace")
        effective = declared(spec.with_file(file), dev)
        remote = remote_images(builder.backend)
        if remote is not None:  # the provider builds the declared environment with the clone
            await remote.cold_image(effective, staging, record.id)
        else:  # pulled (bounded by NIGHTSHIFT_IMAGE_MAX_MB) and unpacked once per digest
            await asyncio.to_thread(
                base_environment, effective, builder.backend, builder.oci, staging
            )
        await asyncio.to_thread(chown_tree, root, builder.owner)
        staging.rename(final)
    except BaseException:
        await asyncio.to_thread(remove_tree, staging)
        raise
    record.sha, record.spec_hash, record.location = sha, effective.image_hash(), str(final)
    record.file_spec = recorded_files(file, dev)
    record.finished_at = time.time()
    await asyncio.to_thread(builder.registry.add, record)
    return record, effective
