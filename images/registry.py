"""The image registry: every build attempt and every image, in the control DB.

Rows live in the control DB (SQLite or PostgreSQL) so every worker sees the same images and
the same build locks; `app/` creates the tables with the rest (`IMAGE_TABLES`). The image
directories themselves are artefacts of a local backend on one host, so for local backends
only rows of this host are candidates to start sandboxes from.

An image row goes `building` → `ready` (or `failed`, log kept) → `collected` once newer
images replaced it and nothing uses it. A `cold` row is a bare clone a session started from
while no image existed; it is collected as soon as nothing uses it.
"""

from __future__ import annotations

import secrets
import socket
import time
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, Column, Engine, Index, Text, delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, select
from sqlmodel import Session as DB

from images.environments import effective_from_record
from images.sandboxes.base import ImageRef
from images.spec import RepoSpec, SpecFile
from images.sql import table_of

ImageStatus = Literal["building", "ready", "failed", "cold", "collected"]
Trigger = Literal["schedule", "manual", "added", "changed", "session", "warm", "push"]
SHARED_BACKENDS = frozenset({"modal"})
"""Backends whose images any host can start; the rest keep images on the building host."""


def new_image_id(prefix: str = "img") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


class ImageRecord(SQLModel, table=True):
    """One build attempt; a usable image while `status` is `ready`."""

    __tablename__ = "images"
    __table_args__ = (Index("ix_images_repo_status", "repo", "status"),)

    id: str = Field(primary_key=True, max_length=64)
    repo: str = Field(max_length=200)
    status: str = Field(default="building", max_length=16)
    trigger: str = Field(default="manual", max_length=16)
    sha: str | None = Field(default=None, max_length=64)
    spec_hash: str | None = Field(default=None, max_length=64)
    runtime: str = Field(max_length=100)
    backend: str = Field(max_length=32)
    host: str = Field(max_length=255)
    location: str | None = Field(default=None, max_length=1000)
    file_spec: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """What the repository's `.nightshift.toml` said at `sha` (None: no file)."""
    environment_digest: str | None = Field(default=None, max_length=100)
    """The manifest digest of the declared image the image was built on (None: host tools)."""
    size_bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    """The image directory's size on disk at the end of its build (None: a provider's image)."""
    environment_size_bytes: int | None = Field(
        default=None, sa_column=Column(BigInteger, nullable=True)
    )
    """The size of the shared, unpacked root of its declared image (None: host tools)."""
    error: str | None = Field(default=None, max_length=2000)
    log: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    duration_ms: int | None = None

    def ref(self) -> ImageRef:
        assert self.sha is not None and self.location is not None
        return ImageRef(
            id=self.id,
            repo=self.repo,
            sha=self.sha,
            backend=self.backend,
            location=self.location,
            runtime=self.runtime,
            built_at=self.finished_at or self.created_at,
            spec_hash=self.spec_hash or "",
        )

    def spec_file(self) -> SpecFile | None:
        return SpecFile.model_validate(self.file_spec) if self.file_spec is not None else None

    def effective(self, spec: RepoSpec) -> RepoSpec:
        """`spec` as this image's commit completes it (`.nightshift.toml`, devcontainer.json)."""
        return effective_from_record(spec, self.file_spec)


class BuildLock(SQLModel, table=True):
    """Single flight: the holder of a repo's row (until `expires_at`) is its only builder."""

    __tablename__ = "image_build_locks"

    key: str = Field(primary_key=True, max_length=300)
    holder: str = Field(max_length=200)
    expires_at: float
    build_id: str | None = Field(default=None, max_length=64)


IMAGE_TABLES = [
    table_of(ImageRecord),
    table_of(BuildLock),
]


class ImageRegistry:
    """Image rows of one backend and runtime version (and, for local backends, this host)."""

    def __init__(
        self,
        engine: Engine,
        backend: str,
        runtime: str,
        host: str | None = None,
        reads: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.reads = reads or engine
        """Where the reading methods read: the control DB's read-only companion when given
        (SQLite: plain BEGIN under WAL), so a sandbox's start looking for its image never
        queues for the write lock behind index updates and session creations."""
        self.backend = backend
        self.runtime = runtime
        self.host = host or socket.gethostname()

    # ------------------------------------------------------------ reading

    def _mine(self, query: Any) -> Any:
        query = query.where(
            col(ImageRecord.backend) == self.backend, col(ImageRecord.runtime) == self.runtime
        )
        if self.backend not in SHARED_BACKENDS:
            query = query.where(col(ImageRecord.host) == self.host)
        return query

    def get(self, image_id: str) -> ImageRecord | None:
        with DB(self.reads) as db:
            return db.get(ImageRecord, image_id)

    def newest(self, repo: str, spec_hash: str | None = None) -> ImageRecord | None:
        """The newest ready image of `repo` (with that spec hash, when given)."""
        query = self._mine(select(ImageRecord)).where(
            col(ImageRecord.repo) == repo, col(ImageRecord.status) == "ready"
        )
        if spec_hash is not None:
            query = query.where(col(ImageRecord.spec_hash) == spec_hash)
        with DB(self.reads) as db:
            row: ImageRecord | None = db.exec(
                query.order_by(col(ImageRecord.finished_at).desc()).limit(1)
            ).first()
            return row

    def ready(self, repo: str) -> list[ImageRecord]:
        """Ready images of `repo`, newest first."""
        query = self._mine(select(ImageRecord)).where(
            col(ImageRecord.repo) == repo, col(ImageRecord.status) == "ready"
        )
        with DB(self.reads) as db:
            return list(db.exec(query.order_by(col(ImageRecord.finished_at).desc())).all())

    def find(self, repo: str, sha: str, spec_hash: str) -> ImageRecord | None:
        """The newest attempt at exactly this commit and spec (any status but collected)."""
        query = self._mine(select(ImageRecord)).where(
            col(ImageRecord.repo) == repo,
            col(ImageRecord.sha) == sha,
            col(ImageRecord.spec_hash) == spec_hash,
            col(ImageRecord.status).in_(["ready", "failed", "building"]),
        )
        with DB(self.reads) as db:
            row: ImageRecord | None = db.exec(
                query.order_by(col(ImageRecord.created_at).desc()).limit(1)
            ).first()
            return row

    def history(self, repo: str | None = None, limit: int = 100) -> list[ImageRecord]:
        """Build attempts, newest first (collected images included, marked so)."""
        query = select(ImageRecord)
        if repo is not None:
            query = query.where(col(ImageRecord.repo) == repo)
        with DB(self.reads) as db:
            return list(
                db.exec(query.order_by(col(ImageRecord.created_at).desc()).limit(limit)).all()
            )

    # ------------------------------------------------------------ writing

    def add(self, record: ImageRecord) -> ImageRecord:
        with DB(self.engine, expire_on_commit=False) as db:
            db.add(record)
            db.commit()
            db.refresh(record)
            return record

    def new_record(
        self, repo: str, trigger: str, status: ImageStatus = "building", prefix: str = "img"
    ) -> ImageRecord:
        return ImageRecord(
            id=new_image_id(prefix),
            repo=repo,
            status=status,
            trigger=trigger,
            runtime=self.runtime,
            backend=self.backend,
            host=self.host,
        )

    def save(self, record: ImageRecord, **values: Any) -> ImageRecord:
        """Update `record` (in memory and in the DB) with `values`."""
        for key, value in values.items():
            setattr(record, key, value)
        with DB(self.engine) as db:
            db.exec(update(ImageRecord).where(col(ImageRecord.id) == record.id).values(**values))
            db.commit()
        return record

    def delete(self, image_id: str) -> None:
        with DB(self.engine) as db:
            db.exec(delete(ImageRecord).where(col(ImageRecord.id) == image_id))
            db.commit()

    def interrupt_stale(self, repo: str, keep: str | None = None) -> int:
        """Mark this host's `building` rows of `repo` (but `keep`) failed: their builder died.

        Only called by the holder of the repo's build lock, so no live build is among them.
        """
        query = (
            update(ImageRecord)
            .where(
                col(ImageRecord.repo) == repo,
                col(ImageRecord.status) == "building",
                col(ImageRecord.host) == self.host,
                col(ImageRecord.backend) == self.backend,
            )
            .values(
                status="failed",
                error="interrupted: the process building it stopped",
                finished_at=time.time(),
            )
        )
        if keep is not None:
            query = query.where(col(ImageRecord.id) != keep)
        with DB(self.engine) as db:
            result = db.exec(query)
            db.commit()
            return int(result.rowcount or 0)

    def prune_failed(self, repo: str, keep: int = 10) -> int:
        """Forget all but the newest `keep` failed attempts of `repo`."""
        with DB(self.engine) as db:
            ids = db.exec(
                select(ImageRecord.id)
                .where(col(ImageRecord.repo) == repo, col(ImageRecord.status) == "failed")
                .order_by(col(ImageRecord.created_at).desc())
                .offset(keep)
            ).all()
            if ids:
                db.exec(delete(ImageRecord).where(col(ImageRecord.id).in_(list(ids))))
                db.commit()
            return len(ids)

    def collectable(self, repo: str, keep: int, in_use: set[str]) -> list[ImageRecord]:
        """This host's images of `repo` past the newest `keep` ready ones that nothing uses."""
        query = self._mine(select(ImageRecord)).where(
            col(ImageRecord.repo) == repo, col(ImageRecord.status).in_(["ready", "cold"])
        )
        with DB(self.engine) as db:
            rows = db.exec(query.order_by(col(ImageRecord.finished_at).desc())).all()
        ready = [r for r in rows if r.status == "ready"]
        cold = [r for r in rows if r.status == "cold"]
        return [r for r in ready[keep:] + cold if r.id not in in_use]

    def environment_digests(self) -> set[str]:
        """Digests of declared images that this host's images (not collected) run on."""
        query = self._mine(select(ImageRecord.environment_digest)).where(
            col(ImageRecord.status).in_(["ready", "cold", "building"]),
            col(ImageRecord.environment_digest).is_not(None),
        )
        with DB(self.reads) as db:
            return {d for d in db.exec(query).all() if d}

    def repos(self) -> list[str]:
        with DB(self.reads) as db:
            return sorted(set(db.exec(select(ImageRecord.repo).distinct()).all()))

    # ------------------------------------------------------------ single flight

    def lock_key(self, repo: str) -> str:
        scope = "*" if self.backend in SHARED_BACKENDS else self.host
        return f"{self.backend}@{scope}:{repo}"

    def acquire_lock(self, repo: str, holder: str, ttl: float) -> bool:
        """Take the repo's build lock (free, expired, or already ours) for `ttl` seconds."""
        key, now = self.lock_key(repo), time.time()
        with DB(self.engine) as db:
            result = db.exec(
                update(BuildLock)
                .where(
                    col(BuildLock.key) == key,
                    or_(col(BuildLock.expires_at) < now, col(BuildLock.holder) == holder),
                )
                .values(holder=holder, expires_at=now + ttl)
            )
            db.commit()
            if result.rowcount == 1:
                return True
        try:
            with DB(self.engine) as db:
                if db.get(BuildLock, key) is not None:
                    return False
                db.add(BuildLock(key=key, holder=holder, expires_at=now + ttl))
                db.commit()
                return True
        except IntegrityError:
            return False  # another process inserted it first

    def renew_lock(self, repo: str, holder: str, ttl: float, build_id: str | None = None) -> bool:
        with DB(self.engine) as db:
            values: dict[str, Any] = {"expires_at": time.time() + ttl}
            if build_id is not None:
                values["build_id"] = build_id
            result = db.exec(
                update(BuildLock)
                .where(col(BuildLock.key) == self.lock_key(repo), col(BuildLock.holder) == holder)
                .values(**values)
            )
            db.commit()
            return bool(result.rowcount == 1)

    def release_lock(self, repo: str, holder: str) -> None:
        with DB(self.engine) as db:
            db.exec(
                delete(BuildLock).where(
                    col(BuildLock.key) == self.lock_key(repo), col(BuildLock.holder) == holder
                )
            )
            db.commit()

    def lock_holder(self, repo: str) -> BuildLock | None:
        with DB(self.engine) as db:
            row = db.get(BuildLock, self.lock_key(repo))
        if row is None or row.expires_at < time.time():
            return None
        return row
