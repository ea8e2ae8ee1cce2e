"""The registered repositories, read: a row turned into the spec workers use, and lookups
that every session makes answered from memory.

A removed repo keeps its row (sessions and pull requests name it): lookups for new work
(`list`, `get`) leave it out or refuse it, reads of history (`get(removed=True)`, `by_id`,
`spec_by_id`, which running sessions use) still find it."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.db import reader
from app.errors import NotFound
from app.models import Repo
from app.schemas import utc_minute
from images.spec import RepoSpec
from integrations.forge.base import ForgeError
from integrations.forge.local import resolve_local_repo

REFRESH_S = 5.0
"""How long a repo read from the control DB answers lookups before it is read again: a change
or a removal another process makes (`PATCH`/`DELETE /api/repos/{repo}`, `nightshift repos
set|remove`) reaches this one within this time; a process's own changes at once."""


def removed_message(repo: Repo) -> str:
    """Why `repo` takes no new work, and how to bring it back."""
    return (
        f"repo {repo.name!r} was removed on {utc_minute(repo.removed_at or 0)}: register it "
        "again (`nightshift repos add`, POST /api/repos) to work on it"
    )


def refuse_removed(repo: Repo, also: str = "") -> Repo:
    """`repo` when it is in use; NotFound saying it was removed (and `also`) when not."""
    if repo.removed_at is not None:
        raise NotFound(removed_message(repo) + also)
    return repo


def spec_of(repo: Repo) -> RepoSpec:
    return RepoSpec(
        name=repo.name,
        url=repo.url,
        forge=repo.forge,
        base=repo.base,
        setup=list(repo.setup),
        warm=list(repo.warm),
        env=dict(repo.env),
        egress=list(repo.egress),
        description=repo.description,
        pool_size=repo.pool_size,
        image=repo.image,
        dockerfile=repo.dockerfile,
        context=repo.context,
        devcontainer=repo.devcontainer,
    )


@dataclass(eq=False)
class _Known:
    repo: Repo
    read_at: float
    spec: RepoSpec | None = None
    """Validated on first use, once per read of the row."""


@dataclass(eq=False)
class _Cache:
    by_name: dict[str, _Known] = field(default_factory=dict)
    by_id: dict[int, _Known] = field(default_factory=dict)


_CACHES: weakref.WeakKeyDictionary[Engine, _Cache] = weakref.WeakKeyDictionary()
"""One cache per control DB engine: the catalogs of one process (the images' and the
sessions') see each other's reads and changes."""


class RepoCatalog:
    """The registered repositories, read-only: what services that only look repos up use
    (built before `Repos`, whose additions may already act on them)."""

    def __init__(self, engine: Engine, refresh_s: float = REFRESH_S) -> None:
        self.engine = engine
        self.refresh_s = refresh_s
        cache = _CACHES.setdefault(engine, _Cache())
        self._by_name = cache.by_name
        self._by_id = cache.by_id
        """Repos found so far, each read again once it is `refresh_s` old; a name or id not
        found yet is always looked up in the control DB (another process may have
        registered it)."""

    def _remember(self, repo: Repo | None) -> Repo | None:
        if repo is not None and repo.id is not None:
            self._by_name[repo.name] = self._by_id[repo.id] = _Known(repo, time.monotonic())
        return repo

    def _fresh(self, known: _Known | None) -> _Known | None:
        if known is not None and time.monotonic() - known.read_at < self.refresh_s:
            return known
        return None

    def list(self, removed: bool = False) -> list[Repo]:
        """The repos in use (what images are built for, Slack offers, the scheduler checks);
        with `removed`, the removed ones too."""
        query = select(Repo).order_by(col(Repo.name))
        if not removed:
            query = query.where(col(Repo.removed_at).is_(None))
        with DB(reader(self.engine)) as db:  # reads never queue behind a write
            return list(db.exec(query).all())

    def get(self, name: str, removed: bool = False) -> Repo:
        """The repo named `name`, for new work: NotFound if unknown or removed (saying so).
        With `removed`, a removed one too (its detail and pull requests stay readable)."""
        known = self._fresh(self._by_name.get(name))
        if known is not None:
            repo: Repo | None = known.repo
        else:
            with DB(reader(self.engine)) as db:
                repo = self._remember(db.exec(select(Repo).where(Repo.name == name)).first())
        if repo is None:
            names = ", ".join(r.name for r in self.list()) or "none yet"
            raise NotFound(f"unknown repo {name!r} (registered: {names})")
        return repo if removed else refuse_removed(repo)

    def spec_by_id(self, repo_id: int) -> RepoSpec:
        """The repo's spec, validated once per read of its row."""
        known = self._fresh(self._by_id.get(repo_id))
        if known is None:
            self.by_id(repo_id)
            known = self._by_id[repo_id]
        if known.spec is None:
            known.spec = spec_of(known.repo)
        return known.spec

    def by_id(self, repo_id: int) -> Repo:
        """The repo of a session or pull request, removed or not."""
        known = self._fresh(self._by_id.get(repo_id))
        if known is not None:
            return known.repo
        # The reader: a follow-up asks this inside its write transaction (SQLite: the writer's
        # lock is held, and a second writer would wait for it until it gives up).
        with DB(reader(self.engine)) as db:
            repo = self._remember(db.get(Repo, repo_id))
        if repo is None:
            raise NotFound(f"unknown repo id {repo_id}")
        return repo

    def check_open(self, repo_id: int) -> None:
        """Refuse new work (a follow-up) on a removed repo: NotFound saying it was removed."""
        refuse_removed(self.by_id(repo_id))

    def find_local(self, path: str) -> Repo | None:
        """The repo registered at a local path, one in use first; a removed one is found too
        (a session asked for on it is then refused, saying it was removed)."""
        try:
            resolved = str(resolve_local_repo(path))
        except ForgeError:
            return None
        with DB(self.engine) as db:
            rows = db.exec(select(Repo).where(Repo.url == resolved)).all()
        return min(rows, key=lambda r: r.removed_at is not None, default=None)
