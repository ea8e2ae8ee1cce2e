"""Jobs that belong to the control plane: they change sessions or the index, so they run in
the process that owns the session files. Areas register theirs at wiring time; workers (and
beat, through a worker) ask for them through `ControlPlane.run_job`.
"""

from __future__ import annotations

from collections.abc import Callable

from app.errors import Unavailable

MISSING = {
    "reconcile_github": (
        "reconciling pull requests needs the GitHub App on the API server "
        "(GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_PATH)"
    ),
}
"""Why a known job is unavailable on this server."""


class ControlJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, Callable[[], str]] = {}

    def register(self, name: str, job: Callable[[], str]) -> None:
        self._jobs[name] = job

    def available(self, name: str) -> bool:
        return name in self._jobs

    def run(self, name: str) -> str:
        job = self._jobs.get(name)
        if job is None:
            raise Unavailable(MISSING.get(name, f"no control-plane job named {name!r}"))
        return job()
