"""Jobs that belong to the control plane: they change sessions or the index, so they run in
the process that owns the session files. The composition root names them at construction; workers (and
beat, through a worker) ask for them through `ControlPlane.run_job`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from app.errors import Unavailable

MISSING = {
    "reconcile_github": (
        "reconciling pull requests needs the GitHub App on the API server "
        "(GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_PATH)"
    ),
}
"""Why a known job is unavailable on this server."""


class ControlJobs:
    def __init__(self, jobs: Mapping[str, Callable[[], str]]) -> None:
        self._jobs = dict(jobs)

    def available(self, name: str) -> bool:
        return name in self._jobs

    def run(self, name: str) -> str:
        job = self._jobs.get(name)
        if job is None:
            raise Unavailable(MISSING.get(name, f"no control-plane job named {name!r}"))
        return job()
