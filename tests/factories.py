"""Factories: git repositories, people with tokens, and waiting helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def nightshift(
    *args: str, data: Path, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The `nightshift` command of this environment, on data dir `data`."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("nightshift")), *args],
        env={**os.environ, "NIGHTSHIFT_DATA_DIR": str(data), "COLUMNS": "200"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def make_repo(
    root: Path, name: str = "proj", files: dict[str, str] | None = None, bare: bool = False
) -> Path:
    """A git repository with one commit on `main` (a bare one when asked)."""
    work = root / (name + "-work" if bare else name)
    work.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    for path, content in (files or {"README.md": f"# {name}\n"}).items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(work, "add", "-A")
    git(
        work,
        "-c",
        "user.name=Repo Owner",
        "-c",
        "user.email=owner@example.com",
        "commit",
        "-qm",
        "initial commit",
    )
    if not bare:
        return work
    target = root / f"{name}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(target)], check=True)
    return target


@dataclass
class Person:
    user: Any
    token: str

    @property
    def login(self) -> str:
        return str(self.user.login)


def make_person(runtime: Any, login: str, name: str, email: str) -> Person:
    user = runtime.users.upsert(login, name, email)
    return Person(user, runtime.users.create_token(user, "test"))


@dataclass
class ApiClient:
    http: httpx.Client
    base_url: str
    person: Person

    def as_(self, person: Person) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {person.token}"}, timeout=30
        )

    def add_repo(self, path: Path, **extra: Any) -> dict[str, Any]:
        r = self.http.post("/api/repos", json={"url": str(path), **extra})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def create(self, repo: str, prompt: str, **extra: Any) -> dict[str, Any]:
        r = self.http.post("/api/sessions", json={"repo": repo, "prompt": prompt, **extra})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def session(self, session_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/sessions/{session_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, session_id: str, after: int = 0) -> list[dict[str, Any]]:
        r = self.http.get(f"/api/sessions/{session_id}/events", params={"after": after})
        assert r.status_code == 200, r.text
        return list(r.json())

    def ready_image(self, repo: str, sha: str | None = None) -> dict[str, Any]:
        """Wait for a ready image of `repo` (of commit `sha` when given); adding a repo only
        queues its build, and a session asked for before it is ready starts cold."""

        def ready() -> dict[str, Any] | None:
            images = self.http.get("/api/images", params={"repo": repo}).json()
            return next(
                (i for i in images if i["status"] == "ready" and sha in (None, i["sha"])),
                None,
            )

        return wait_for(ready, 60, f"a ready image of {repo}")

    def wait_status(self, session_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: ((s := self.session(session_id))["status"] in statuses and s) or None,
            timeout,
            f"session {session_id} to reach {statuses}",
        )


SLOW_MACHINE = 3
"""Waits are this many times the bound a test names: the suite runs on 2-core machines whose
cores differ threefold in speed (a wait that ends when its condition holds costs nothing
more; only a failure takes longer to say so)."""


def wait_for(predicate: Callable[[], T | None], timeout: float = 30, what: str = "condition") -> T:
    timeout *= SLOW_MACHINE
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def make_sessions(runtime: Any, n: int, repo: str = "proj") -> list[str]:
    """`n` sessions of one person on `repo`, created through the service (ids, in order)."""
    alice = make_person(runtime, "alice", "Alice", "alice@example.com")
    return [runtime.sessions.create(alice.user, repo, f"task {k}").id for k in range(n)]
