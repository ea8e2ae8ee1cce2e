"""Run one sandboxed command as its own process group: wall timeout, output cap, clean kill;
then name the limit that ended it (`name_limit`).

Output past the cap is read and dropped, so a chatty command still finishes; a command that
keeps writing past `FLOOD_FACTOR` times the cap has its pipes closed, and it gets SIGPIPE as
if piped into `head` (`ended_by="output"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from images.sandboxes.base import EndedBy, ExecResult
from images.sandboxes.limits import Counters

TIMEOUT_EXIT = 124
KILLED_EXIT = 137
XCPU_EXIT = 128 + signal.SIGXCPU
FLOOD_FACTOR = 64
FLOOD_MIN_BYTES = 16 << 20


@dataclass
class _Sink:
    cap: int
    flood: int
    data: bytearray
    seen: int = 0

    @property
    def truncated(self) -> bool:
        return self.seen > self.cap


async def _drain(fd: int, sink: _Sink, flooded: asyncio.Event) -> None:
    """Read `fd` to EOF keeping the first `cap` bytes; give up (close it) past `flood`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        while chunk := await reader.read(1 << 16):
            room = sink.cap - len(sink.data)
            if room > 0:
                sink.data += chunk[:room]
            sink.seen += len(chunk)
            if sink.seen > sink.flood:
                flooded.set()
                return
    finally:
        transport.close()


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    output_cap: int,
    stdin: bytes | None = None,
    cwd: str | None = None,
    on_timeout: Callable[[int], Awaitable[None]] | None = None,
) -> ExecResult:
    """Run `argv`; on timeout or cancellation the whole process group is killed.

    `on_timeout(pid)` replaces the default kill (a runtime whose processes live elsewhere,
    like gVisor, kills them its own way); it must make the process exit.
    """
    started = time.monotonic()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
        )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    flood = max(FLOOD_FACTOR * output_cap, FLOOD_MIN_BYTES)
    out, err = _Sink(output_cap, flood, bytearray()), _Sink(output_cap, flood, bytearray())
    flooded = asyncio.Event()

    async def feed() -> None:
        if stdin is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

    readers = asyncio.gather(_drain(out_r, out, flooded), _drain(err_r, err, flooded), feed())

    async def finish() -> None:
        await readers
        await proc.wait()

    timed_out = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(finish()), timeout)
        except TimeoutError:
            timed_out = True
            if on_timeout is not None:
                await on_timeout(proc.pid)
            kill_group(proc.pid)
            try:
                await asyncio.wait_for(asyncio.shield(readers), 5)
            except TimeoutError:  # something outside the group still holds the pipes
                readers.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await readers
            await proc.wait()
    except asyncio.CancelledError:
        if on_timeout is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(on_timeout(proc.pid), 5)
        kill_group(proc.pid)
        readers.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    code = proc.returncode if proc.returncode is not None else -1
    ended_by: EndedBy = ""
    if timed_out:
        code, ended_by = TIMEOUT_EXIT, "timeout"
    elif code < 0:
        code = 128 - code  # killed by a signal: report it the way shells do (SIGKILL -> 137)
    if not timed_out and flooded.is_set():
        ended_by = "output"
    return ExecResult(
        exit_code=code,
        stdout=out.data.decode(errors="replace"),
        stderr=err.data.decode(errors="replace"),
        duration_ms=int((time.monotonic() - started) * 1000),
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
        ended_by=ended_by,
        limits_hit=("output",) if out.truncated or err.truncated else (),
    )


def name_limit(
    result: ExecResult, before: Counters, after: Counters, by_deadline: bool
) -> ExecResult:
    """`result` with the limit that ended it named, from its exit and the cgroup counters
    `before` and `after` it ran; `by_deadline`: the sandbox's lifetime cut its timeout short."""
    hits = list(result.limits_hit)
    ended_by: EndedBy = result.ended_by
    code, oom = result.exit_code, False
    if after.pids_refused > before.pids_refused:
        hits.append("pids")
    memory_hit = after.oom_kills > before.oom_kills
    if result.timed_out:
        ended_by = "sandbox_timeout" if by_deadline else "timeout"
        hits.append(ended_by)
    elif memory_hit and code == KILLED_EXIT:
        ended_by, oom = "memory", True
        hits.append("memory")
    elif memory_hit:
        hits.append("memory")  # a child was killed; the command itself carried on
    elif code == XCPU_EXIT:
        ended_by = "cpu"
        hits.append("cpu")
    return ExecResult(
        exit_code=code,
        stdout=result.stdout,
        stderr=result.stderr,
        duration_ms=result.duration_ms,
        timed_out=result.timed_out,
        oom_killed=oom,
        truncated=result.truncated,
        ended_by=ended_by,
        limits_hit=tuple(dict.fromkeys(hits)),
    )
