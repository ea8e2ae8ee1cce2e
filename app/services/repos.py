"""Repos: register a repository, list them, and turn a row into the spec workers use."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import Conflict, Invalid, NotFound
from app.models import Repo
from app.schemas import RepoCreate
from images.spec import RepoSpec
from integrations.forge.base import ForgeError
from integrations.forge.local import resolve_local_repo
from integrations.github.errors import GitHubError

_GITHUB_RE = re.compile(
    r"^(?:https://github\.com/|git@github\.com:)?(?P<owner>[A-Za-z0-9-]+)/(?P<name>[A-Za-z0-9._-]+?)(?:\.git)?/?$"
)


def spec_of(repo: Repo) -> RepoSpec:
    return RepoSpec(
        name=repo.name,
        url=repo.url,
        forge=repo.forge,  # type: ignore[arg-type]
        base=repo.base,
        setup=list(repo.setup),
        warm=list(repo.warm),
        env=dict(repo.env),
        egress=list(repo.egress),
        description=repo.description,
        pool_size=repo.pool_size,
    )


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


class Repos:
    def __init__(
        self,
        engine: Engine,
        github_enabled: bool = False,
        github_default_branch: Callable[[str], str] | None = None,
    ) -> None:
        self.engine = engine
        self.github_enabled = github_enabled
        self.github_default_branch = github_default_branch
        """`owner/name` → its default branch, checking the App can reach the repository."""
        self.validators: list[Callable[[RepoSpec], None]] = []
        """Checks a new repo must pass (e.g. its `.nightshift.toml`); raise Invalid to refuse."""
        self.on_added: list[Callable[[Repo], None]] = []

    def _locate(self, url: str) -> tuple[str, str, str]:
        """(forge, canonical url, default name) for a path or a GitHub reference."""
        looks_local = url.startswith(("/", ".", "~")) or Path(url).expanduser().exists()
        match = None if looks_local else _GITHUB_RE.match(url)
        if match:
            if not self.github_enabled:
                raise Invalid(
                    f"{url} is a GitHub repository, but the GitHub forge is not configured: "
                    "set GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY (see README, GitHub)"
                )
            full = f"{match['owner']}/{match['name']}"
            return "github", full, full
        try:
            path = resolve_local_repo(url)
        except ForgeError as exc:
            raise Invalid(str(exc)) from exc
        return "local", str(path), path.name.removesuffix(".git")

    def add(self, body: RepoCreate, default_base: str | None = None) -> Repo:
        forge, url, default_name = self._locate(body.url)
        if forge == "github" and self.github_default_branch is not None:
            try:
                found = self.github_default_branch(url)
            except GitHubError as exc:
                raise Invalid(str(exc)) from exc
            base = body.base or default_base or found
        else:
            base = body.base or default_base or _default_branch(url, forge)
        try:
            spec = RepoSpec(
                name=body.name or default_name,
                url=url,
                forge=forge,  # type: ignore[arg-type]
                base=base,
                setup=body.setup,
                warm=body.warm,
                env=body.env,
                egress=body.egress,
                description=body.description,
                pool_size=body.pool_size,
            )
        except ValidationError as exc:
            raise Invalid(_validation_message(exc)) from exc
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}", spec.name) or ".." in spec.name:
            raise Invalid(f"{spec.name!r} is not a usable repo name (letters, digits, . _ - /)")
        with DB(self.engine) as db:
            if db.exec(select(Repo).where(Repo.name == spec.name)).first() is not None:
                raise Conflict(f"a repo named {spec.name!r} already exists; pick another with name")
        for validate in self.validators:
            validate(spec)
        with DB(self.engine, expire_on_commit=False) as db:
            if db.exec(select(Repo).where(Repo.name == spec.name)).first() is not None:
                raise Conflict(f"a repo named {spec.name!r} already exists; pick another with name")
            repo = Repo(
                name=spec.name,
                url=spec.url,
                forge=spec.forge,
                base=spec.base,
                description=spec.description,
                pool_size=spec.pool_size,
                setup=spec.setup,
                warm=spec.warm,
                env=spec.env,
                egress=spec.egress,
            )
            db.add(repo)
            db.commit()
            db.refresh(repo)
        for callback in self.on_added:
            callback(repo)
        return repo

    def list(self) -> list[Repo]:
        with DB(self.engine) as db:
            return list(db.exec(select(Repo).order_by(col(Repo.name))).all())

    def get(self, name: str) -> Repo:
        with DB(self.engine) as db:
            repo = db.exec(select(Repo).where(Repo.name == name)).first()
        if repo is None:
            known = ", ".join(r.name for r in self.list()) or "none yet"
            raise NotFound(f"unknown repo {name!r} (registered: {known})")
        return repo

    def by_id(self, repo_id: int) -> Repo:
        with DB(self.engine) as db:
            repo = db.get(Repo, repo_id)
        if repo is None:
            raise NotFound(f"unknown repo id {repo_id}")
        return repo

    def find_local(self, path: str) -> Repo | None:
        try:
            resolved = str(resolve_local_repo(path))
        except ForgeError:
            return None
        with DB(self.engine) as db:
            return db.exec(select(Repo).where(Repo.url == resolved)).first()


def _default_branch(url: str, forge: str) -> str:
    """The local repository's current branch (or `main`)."""
    if forge != "local":
        return "main"
    import subprocess

    out = subprocess.run(
        ["git", "-C", url, "symbolic-ref", "--quiet", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "main"
