"""Background jobs: `run` with `background: true` starts a command (a server) that keeps running
while the agent works, and `job_output` / `job_stop` read and end it.

A job is one ordinary `Sandbox.exec` held open by a task of this process, so it runs under the
sandbox's limits (memory, processes, CPU, its lifetime) and ends with the sandbox: terminating
a sandbox ends every command it runs. Before the first job the sandbox is asked to
`share_network`, so later commands (and the `screenshot` browser) reach the job on loopback.
Its output goes to a log file in the sandbox's private /tmp, read back by a later command:
what the job writes is the sandbox's own data and is shown to the model as such, capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from images.ansi import strip_ansi
from images.sandboxes.base import ExecResult, Sandbox, SandboxError
from workers.agent.toolbase import Tool, ToolContext, ToolOutput
from workers.errors import ToolError

LOG_DIR = "/tmp/.nightshift-jobs"  # noqa: S108 (the sandbox's own private /tmp)
MAX_JOBS = 8
"""Live jobs per sandbox; more is almost always a loop starting the same server again."""
SETTLE_S = 1.0
"""How long `start` waits to catch a command that fails at once (a port in use, a typo)."""
TAIL_BYTES = 16_000
"""How much of a job's log one `job_output` returns: its end, where the news is."""

_SCRIPT = 'mkdir -p "$2" && exec bash -c "$1" >"$2/$3.log" 2>&1 </dev/null'


@dataclass
class Job:
    id: str
    command: str
    task: asyncio.Task[ExecResult]

    @property
    def log(self) -> str:
        return f"{LOG_DIR}/{self.id}.log"

    def state(self) -> str:
        """`running`, `exited with code N`, or why it ended."""
        if not self.task.done():
            return "running"
        if self.task.cancelled():
            return "stopped"
        exc = self.task.exception()
        if exc is not None:
            return f"ended: {exc}"
        result = self.task.result()
        if result.ended_by:
            return f"killed ({result.ended_by}), exit code {result.exit_code}"
        return f"exited with code {result.exit_code}"


@dataclass
class Jobs:
    """The background jobs of one sandbox (which it does not hold: it is the weak key)."""

    jobs: dict[str, Job] = field(default_factory=dict)
    started: int = 0

    async def start(self, sandbox: Sandbox, command: str, cwd: str, timeout_s: float) -> Job:
        live = [j for j in self.jobs.values() if not j.task.done()]
        if len(live) >= MAX_JOBS:
            raise ToolError(
                f"{len(live)} background jobs are running already; stop one with job_stop first"
            )
        try:
            await sandbox.share_network()
        except SandboxError as exc:
            raise ToolError(f"background jobs are not available here: {exc}") from exc
        self.started += 1
        job_id = f"job{self.started}"
        argv = ["bash", "-c", _SCRIPT, "nightshift-job", command, LOG_DIR, job_id]
        task = asyncio.ensure_future(sandbox.exec(argv, cwd=cwd, timeout=timeout_s))
        job = self.jobs[job_id] = Job(job_id, command, task)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), SETTLE_S)
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            known = ", ".join(self.jobs) or "none"
            raise ToolError(f"no background job {job_id!r} in this sandbox; jobs: {known}")
        return job

    async def output(self, sandbox: Sandbox, job: Job, max_bytes: int = TAIL_BYTES) -> str:
        """The job's state and the end of its log."""
        read = await sandbox.exec(
            ["tail", "-c", str(max_bytes), job.log], timeout=30, output_cap=max_bytes + 1024
        )
        log = strip_ansi(read.stdout) if read.ok else "(no output yet)"
        return f"background job {job.id} ({job.state()}): $ {job.command}\n{log}"

    async def stop(self, sandbox: Sandbox, job: Job) -> str:
        if not job.task.done():
            job.task.cancel()
            with contextlib.suppress(BaseException):
                await job.task
        return await self.output(sandbox, job)


_BY_SANDBOX: weakref.WeakKeyDictionary[Sandbox, Jobs] = weakref.WeakKeyDictionary()


def jobs_of(sandbox: Sandbox) -> Jobs:
    """The jobs of `sandbox`; they live (and are forgotten) with the sandbox object."""
    jobs = _BY_SANDBOX.get(sandbox)
    if jobs is None:
        jobs = _BY_SANDBOX[sandbox] = Jobs()
    return jobs


class JobArgs(BaseModel):
    job_id: str = Field(min_length=1, max_length=40, description="The id `run` returned")


async def job_output(ctx: ToolContext, a: JobArgs) -> ToolOutput:
    jobs = jobs_of(ctx.sandbox)
    return ToolOutput(await jobs.output(ctx.sandbox, jobs.get(a.job_id)))


async def job_stop(ctx: ToolContext, a: JobArgs) -> ToolOutput:
    jobs = jobs_of(ctx.sandbox)
    return ToolOutput(await jobs.stop(ctx.sandbox, jobs.get(a.job_id)))


async def start_job(ctx: ToolContext, command: str, cwd: str, timeout_s: float) -> ToolOutput:
    """`run` with `background: true`."""
    jobs = jobs_of(ctx.sandbox)
    job = await jobs.start(ctx.sandbox, command, cwd, timeout_s)
    if job.task.done():
        text = await jobs.output(ctx.sandbox, job)
        return ToolOutput(f"the background job ended at once\n{text}", is_error=True)
    return ToolOutput(
        f"started background job {job.id} (runs up to {timeout_s:g}s or until the sandbox "
        f"ends): $ {command}\nRead its output with job_output(job_id={job.id!r}); stop it "
        f"with job_stop(job_id={job.id!r}). Other commands reach it on 127.0.0.1."
    )


JOB_TOOLS = [
    Tool(
        "job_output",
        "The state and latest output of a background job started with run(background=true).",
        JobArgs,
        job_output,
    ),
    Tool("job_stop", "Stop a background job; returns its last output.", JobArgs, job_stop),
]
