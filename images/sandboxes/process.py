"""Run one sandboxed command as its own process group: wall timeout, output cap, clean kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence

from images.sandboxes.base import ExecResult

TIMEOUT_EXIT = 124
KILLED_EXIT = 137


async def _drain(stream: asyncio.StreamReader, cap: int, sink: bytearray) -> bool:
    """Keep the first `cap` bytes, discard the rest (so the writer never blocks)."""
    truncated = False
    while chunk := await stream.read(65536):
        room = cap - len(sink)
        if room > 0:
            sink += chunk[:room]
        if len(chunk) > max(room, 0):
            truncated = True
    return truncated


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    output_cap: int,
    stdin: bytes | None = None,
    cwd: str | None = None,
) -> ExecResult:
    """Run `argv`; on timeout or cancellation the whole process group is killed."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = bytearray(), bytearray()
    assert proc.stdout is not None and proc.stderr is not None

    async def feed() -> None:
        if stdin is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

    readers = asyncio.gather(
        _drain(proc.stdout, output_cap, out), _drain(proc.stderr, output_cap, err), feed()
    )
    timed_out = False
    try:
        try:
            trunc_out, trunc_err, _ = await asyncio.wait_for(asyncio.shield(readers), timeout)
            await asyncio.wait_for(proc.wait(), max(1.0, timeout - (time.monotonic() - started)))
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            trunc_out, trunc_err, _ = await readers
            await proc.wait()
    except asyncio.CancelledError:
        _kill_group(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    code = proc.returncode if proc.returncode is not None else -1
    if timed_out:
        code = TIMEOUT_EXIT
    elif code < 0:
        code = 128 - code  # killed by a signal: report it the way shells do (SIGKILL -> 137)
    return ExecResult(
        exit_code=code,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        duration_ms=int((time.monotonic() - started) * 1000),
        timed_out=timed_out,
        truncated=trunc_out or trunc_err,
    )
