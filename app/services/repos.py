"""Repos: register a repository, change it, remove it; list them, and turn a row into the
spec workers use."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError
from sqlalchemy import Engine, update
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import Conflict, Forbidden, Invalid, NotFound
from app.models import Repo
from app.schemas import RepoAdded, RepoCreate, RepoPublic, RepoUpdate, validation_message
from app.services.repo_catalog import RepoCatalog, refuse_removed, removed_message, spec_of
from images.environments import uncommitted_spec_warning
from images.spec import RepoSpec
from integrations.forge.base import ForgeError, git_env
from integrations.forge.local import resolve_local_repo
from integrations.github.errors import GitHubError

_GITHUB_RE = re.compile(
    r"^(?:https://github\.com/|git@github\.com:)?(?P<owner>[A-Za-z0-9-]+)/(?P<name>[A-Za-z0-9._-]+?)(?:\.git)?/?$"
)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
log = logging.getLogger("nightshift.repos")


def _looks_local(url: str, probe: bool) -> bool:
    """Whether a reference names a path rather than a GitHub repository. Only the operator's
    references are probed on disk (`owner/name` may be a relative directory); an API caller's
    never are, so the answer cannot depend on what exists on the host."""
    if url.startswith(("/", ".", "~")) or url[:5].lower() == "file:":
        return True
    if not probe:
        return False
    try:
        return Path(url).expanduser().exists()
    except (OSError, ValueError, RuntimeError):
        return False


def _path_text(url: str) -> str:
    """The file system path a local reference names: `file://` URLs decoded, other schemes refused."""
    if url[:5].lower() == "file:":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise Invalid(f"{url}: a file: URL must name a path on this host (file:///path)")
        return unquote(parts.path)
    if _SCHEME_RE.match(url):
        raise Invalid(
            f"{url}: only GitHub repositories (owner/name, https://github.com/owner/name) and "
            "local paths can be registered"
        )
    return url


def _resolve(text: str) -> Path:
    """Absolute path with `~`, `..` and every symlink resolved; ValueError if it cannot be one."""
    if "\x00" in text:
        raise ValueError("a path cannot contain a NUL byte")
    try:
        return Path(text).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # an unknown ~user, a symlink loop
        raise ValueError(str(exc)) from None


class Repos(RepoCatalog):
    """The catalog, and registering repositories."""

    def __init__(
        self,
        engine: Engine,
        github_enabled: bool = False,
        github_default_branch: Callable[[str], str] | None = None,
        *,
        data_dir: Path | None = None,
        api_roots: Sequence[Path] = (),
        validators: Sequence[Callable[[RepoSpec], None]] = (),
        on_added: Sequence[Callable[[Repo], None]] = (),
        on_changed: Sequence[Callable[[Repo], None]] = (),
    ) -> None:
        super().__init__(engine)
        self.data_dir = data_dir.resolve() if data_dir is not None else None
        """Never registrable: it holds mirrors, images and every session's files."""
        self.api_roots = tuple(r.resolve() for r in api_roots)
        """Where API callers may register local repositories (NIGHTSHIFT_REPO_ROOTS)."""
        self.github_enabled = github_enabled
        self.github_default_branch = github_default_branch
        """`owner/name` → its default branch, checking the App can reach the repository."""
        self.validators = tuple(validators)
        """Checks a new repo must pass (e.g. its `.nightshift.toml`); raise Invalid to refuse."""
        self.on_added = tuple(on_added)
        """Called with each repo once it is registered (e.g. to build its image)."""
        self.on_changed = tuple(on_changed)
        """Called with each repo once its spec changed (e.g. to build its image again)."""

    def _refusal(self) -> str:
        roots = ", ".join(str(r) for r in self.api_roots)
        where = (
            f"only inside {roots} (NIGHTSHIFT_REPO_ROOTS)"
            if roots
            else "only inside the directories in NIGHTSHIFT_REPO_ROOTS, and none are set"
        )
        return (
            f"a local repository can be registered over the API {where}, never inside "
            "Nightshift's data directory; the operator adds any other path on the host with "
            "`nightshift repos add PATH`"
        )

    def _local_path(self, url: str, over_api: bool) -> Path:
        """The resolved path of a local repository reference, checked for who asks.

        Over the API every refusal is the same 403, whether the path exists or not, so the
        API cannot be used to probe the host's file system outside NIGHTSHIFT_REPO_ROOTS."""
        text = _path_text(url)
        try:
            path = _resolve(text)
        except ValueError as exc:
            if over_api:
                raise Forbidden(self._refusal()) from None
            raise Invalid(f"{url}: {exc}") from None
        inside_data = self.data_dir is not None and path.is_relative_to(self.data_dir)
        if over_api and (inside_data or not any(path.is_relative_to(r) for r in self.api_roots)):
            raise Forbidden(self._refusal())
        if inside_data:
            raise Forbidden(
                f"{url} is inside Nightshift's data directory ({self.data_dir}): register the "
                "repository it came from instead"
            )
        try:
            found = resolve_local_repo(str(path))
        except ForgeError as exc:
            raise Invalid(str(exc)) from exc
        except OSError as exc:
            raise Invalid(f"{url}: {exc.strerror or exc}") from exc
        if found != path:  # a link was swapped while we looked
            raise Forbidden(self._refusal())
        return path

    def _locate(self, url: str, over_api: bool) -> tuple[str, str, str]:
        """(forge, canonical url, default name) for a path or a GitHub reference."""
        match = None if _looks_local(url, probe=not over_api) else _GITHUB_RE.match(url)
        if match:
            if not self.github_enabled:
                raise Invalid(
                    f"{url} is a GitHub repository, but the GitHub forge is not configured: "
                    "set GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY (see README, GitHub)"
                )
            full = f"{match['owner']}/{match['name']}"
            return "github", full, full
        path = self._local_path(url, over_api)
        return "local", str(path), path.name.removesuffix(".git")

    def add_from_api(self, body: RepoCreate) -> Repo:
        """Register a repository for an API caller: local paths only under the API's roots."""
        return self._add(body, None, over_api=True)

    @staticmethod
    def added(row: Repo) -> RepoAdded:
        """A new registration, with what its owner should fix: a local repository's
        `.nightshift.toml` its base branch does not have (builds read the branch)."""
        warning = uncommitted_spec_warning(spec_of(row))
        public = RepoPublic.model_validate(row).model_dump()
        return RepoAdded(**public, warnings=[warning] if warning else [])

    def add(self, body: RepoCreate, default_base: str | None = None) -> Repo:
        """Register a repository as the operator (CLI on the host): any path but the data dir."""
        return self._add(body, default_base, over_api=False)

    def _add(self, body: RepoCreate, default_base: str | None, over_api: bool) -> Repo:
        forge, url, default_name = self._locate(body.url, over_api)
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
                forge=forge,
                base=base,
                setup=body.setup,
                warm=body.warm,
                env=body.env,
                egress=body.egress,
                description=body.description,
                pool_size=body.pool_size,
                image=body.image,
                dockerfile=body.dockerfile,
                context=body.context,
                devcontainer=body.devcontainer,
            )
        except ValidationError as exc:
            raise Invalid(validation_message(exc)) from exc
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}", spec.name) or ".." in spec.name:
            raise Invalid(f"{spec.name!r} is not a usable repo name (letters, digits, . _ - /)")
        with DB(self.engine) as db:
            _check_free(db, spec.name)
        for validate in self.validators:
            validate(spec)
        fields = {**spec.model_dump(include=_STORED), "ci_fix_attempts": body.ci_fix_attempts}
        with DB(self.engine, expire_on_commit=False) as db:
            removed = _check_free(db, spec.name)
            if removed is None:
                repo = Repo(**fields)
            else:  # the name was removed: its row (and its sessions' history) comes back
                repo = removed
                for field, value in fields.items():
                    setattr(repo, field, value)
                repo.removed_at = None
            db.add(repo)
            db.commit()
            db.refresh(repo)
        self._remember(repo)  # a removed row this process read must not answer any more
        if removed is not None:
            log.info("repo %s registered again (%s: %s)", repo.name, repo.forge, repo.url)
        for callback in self.on_added:
            callback(repo)
        return repo

    def update(self, name: str, body: RepoUpdate, who: str = "the operator") -> Repo:
        """Change a registered repo: what `body` names, the rest kept, checked as a new
        registration is (the spec, its `.nightshift.toml` on the base). Sessions already
        started keep the spec they started with; new ones, and the image build it queues,
        take the new one (other processes within `REFRESH_S`)."""
        changes = body.changes()
        if not changes:
            raise Invalid("nothing to change: name at least one field of the repo")
        with DB(self.engine) as db:
            current = db.exec(select(Repo).where(Repo.name == name)).first()
        if current is None:
            self.get(name)  # not found: says which repos there are
            raise NotFound(f"unknown repo {name!r}")
        refuse_removed(current, _NO_CHANGE)
        for validate in self.validators:
            validate(_changed_spec(current, changes))
        with DB(self.engine, expire_on_commit=False) as db:
            row = db.get(Repo, current.id)
            if row is None:
                raise NotFound(f"unknown repo {name!r}")
            refuse_removed(row, _NO_CHANGE)  # removed while the change was checked
            _changed_spec(row, changes)  # still valid on the row as it is now
            for field, value in changes.items():
                setattr(row, field, value)
            db.add(row)
            db.commit()
            db.refresh(row)
        self._remember(row)
        log.info("repo %s changed by %s: %s", row.name, who, ", ".join(sorted(changes)))
        for callback in self.on_changed:
            callback(row)
        return row

    def remove(self, name: str, who: str = "the operator") -> Repo:
        """Remove a repo: it takes no new sessions or follow-ups, is no longer listed, built,
        warmed or offered (other processes within `REFRESH_S`). Its row stays, so its
        sessions and pull requests stay readable; sessions already running finish."""
        with DB(self.engine, expire_on_commit=False) as db:
            found = db.exec(select(Repo).where(Repo.name == name)).first()
            if found is None:
                self.get(name)  # not found: says which repos there are
                raise NotFound(f"unknown repo {name!r}")
            result = db.exec(  # once: of two removals at the same time, the second is a 404
                update(Repo)
                .where(col(Repo.id) == found.id, col(Repo.removed_at).is_(None))
                .values(removed_at=time.time())
            )
            db.commit()
            row = db.get(Repo, found.id, populate_existing=True)
        if row is None:
            raise NotFound(f"unknown repo {name!r}")
        if result.rowcount != 1:
            raise NotFound(removed_message(row))
        self._remember(row)
        log.info("repo %s removed by %s", row.name, who)
        return row


_NO_CHANGE = "; a removed repo cannot be changed"

_STORED = {
    "name", "url", "forge", "base", "description", "pool_size", "image", "dockerfile",
    "context", "devcontainer", "setup", "warm", "env", "egress",
}  # fmt: skip
"""The spec's fields a registration stores on the row."""


def _check_free(db: DB, name: str) -> Repo | None:
    """Conflict if a repo in use has `name`; the removed row that has it, if one does."""
    row = db.exec(select(Repo).where(Repo.name == name)).first()
    if row is not None and row.removed_at is None:
        raise Conflict(_taken(name))
    return row


def _changed_spec(repo: Repo, changes: dict[str, object]) -> RepoSpec:
    """The spec `repo` has with `changes` made; Invalid (saying why) if it is not one."""
    values = {**spec_of(repo).model_dump(), **changes}
    values.pop("ci_fix_attempts", None)
    try:
        return RepoSpec.model_validate(values)
    except ValidationError as exc:
        raise Invalid(validation_message(exc)) from exc


def _default_branch(url: str, forge: str) -> str:
    """The local repository's current branch (or `main`)."""
    if forge != "local":
        return "main"
    import subprocess

    out = subprocess.run(  # asked for API callers too: no system or user git config
        ["git", "-C", url, "symbolic-ref", "--quiet", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        env=git_env(),
    )
    return out.stdout.strip() or "main"


def _taken(name: str) -> str:
    return (
        f"a repo named {name!r} already exists; register this one under another name "
        '(`--name` on the CLI, "name" in the API)'
    )
