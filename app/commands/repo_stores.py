"""Where `nightshift repos` acts: this machine's data dir, or a named server's API.

Both answer with the API's public models, so each command prints the same lines and tables
either way. The data dir is the default even when NIGHTSHIFT_SERVER is set: scripts written
for the operator's host keep doing what they did; `--server URL` opts in to the API, where
the server that takes a change also rebuilds the repo's image at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from app.commands.client import Client
from app.commands.common import load_settings, runtime_from
from app.commands.remote import connected
from app.schemas import RepoAdded, RepoCreate, RepoDetail, RepoListed, RepoPublic, RepoUpdate

if TYPE_CHECKING:
    from app.runtime import Runtime


class RepoStore(Protocol):
    """The registered repositories, as one command reads and changes them."""

    where: str
    """Where a registration lands, for the command's line (`in the data dir …`, `on URL`)."""
    server_flag: str
    """What a printed follow-up command needs to act in the same place (` --server URL`)."""

    def add(self, body: RepoCreate) -> RepoAdded:
        """The new registration, with what its owner should fix (`warnings`)."""
        ...

    def update(self, name: str, body: RepoUpdate) -> RepoPublic: ...
    def to_remove(self, name: str) -> RepoPublic:
        """The repo a removal would remove, before asking; may fail as the removal would."""
        ...

    def remove(self, name: str) -> RepoPublic: ...
    def detail(self, name: str) -> RepoDetail: ...
    def list(self, removed: bool) -> list[RepoListed]: ...
    def rebuild_note(self, name: str) -> str:
        """When a changed repo's image is built again."""
        ...


class DataDirRepos:
    """The control DB of this machine's data dir, written directly (no server involved)."""

    def __init__(self, runtime: Runtime, where: str) -> None:
        self.runtime = runtime
        self.where = where
        self.server_flag = ""

    def add(self, body: RepoCreate) -> RepoAdded:
        return self.runtime.repos.added(self.runtime.repos.add(body))

    def update(self, name: str, body: RepoUpdate) -> RepoPublic:
        return RepoPublic.model_validate(self.runtime.repos.update(name, body))

    def to_remove(self, name: str) -> RepoPublic:
        return RepoPublic.model_validate(self.runtime.repos.get(name))  # refuses a removed one

    def remove(self, name: str) -> RepoPublic:
        return RepoPublic.model_validate(self.runtime.repos.remove(name))

    def detail(self, name: str) -> RepoDetail:
        return self.runtime.images.repo_detail(name)

    def list(self, removed: bool) -> list[RepoListed]:
        return self.runtime.images.listed(removed)

    def rebuild_note(self, name: str) -> str:
        return (
            "a server on this data dir builds its image again at its next check "
            f"(`nightshift images build {name}` builds it now)"
        )


class ServerRepos:
    """A server's repositories through its API, as the token `nightshift login` kept allows."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.where = f"on {client.server}"
        self.server_flag = f" --server {client.server}"

    def add(self, body: RepoCreate) -> RepoAdded:
        # The server looks at a local path's working tree (on its machine) for the warnings.
        return RepoAdded.model_validate(
            self.client.create_repo(body.model_dump(mode="json", exclude_unset=True))
        )

    def update(self, name: str, body: RepoUpdate) -> RepoPublic:
        # Only the fields named: PATCH keeps the rest, and `null` clears a field.
        changes = body.model_dump(mode="json", exclude_unset=True)
        return RepoPublic.model_validate(self.client.update_repo(name, changes))

    def to_remove(self, name: str) -> RepoPublic:
        # The server answers a removed repo too; its DELETE then says when it was removed.
        return RepoPublic.model_validate(self.client.repo(name))

    def remove(self, name: str) -> RepoPublic:
        return RepoPublic.model_validate(self.client.remove_repo(name))

    def detail(self, name: str) -> RepoDetail:
        return RepoDetail.model_validate(self.client.repo(name))

    def list(self, removed: bool) -> list[RepoListed]:
        return [RepoListed.model_validate(r) for r in self.client.list_repos(removed=removed)]

    def rebuild_note(self, name: str) -> str:
        return f"{self.client.server} builds its image again now"


@contextlib.contextmanager
def repo_store(server: str | None) -> Iterator[RepoStore]:
    """The data dir's repos, or with `server` that server's (its refusals: exit 1)."""
    if not server:
        settings = load_settings()
        with runtime_from(settings) as runtime:
            yield DataDirRepos(runtime, f"in the data dir {settings.data_dir.resolve()}")
        return
    with connected(server) as client:
        yield ServerRepos(client)
