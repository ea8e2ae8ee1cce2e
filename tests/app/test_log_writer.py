"""Log lines are written by a thread of their own (`app/log_writer.py`): an output nobody
reads drops lines instead of stopping the API."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from app.log_writer import defer_log_writes
from tests.cluster import free_port


def _blocked_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: the next write to it blocks until someone reads."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def test_records_wait_for_their_writer_and_a_stalled_output_drops_them() -> None:
    read_end, write_end = _blocked_pipe()
    stream = os.fdopen(write_end, "w", buffering=1)
    logger = logging.getLogger("nightshift.test.log_writer")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    writer = defer_log_writes([logger.name], capacity=50)
    try:
        started = time.monotonic()
        for i in range(500):  # the output is blocked: none of these may wait for it
            logger.info("line %d", i)
        assert time.monotonic() - started < 2
        assert writer.dropped > 0
        # Someone reads again: the queued lines come out in order, then a note of the loss.
        out = bytearray()

        def read() -> None:
            while chunk := os.read(read_end, 65536):
                out.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while writer.queued and time.monotonic() < deadline:
            time.sleep(0.01)
        logger.info("after")
        writer.stop()
        stream.close()
        reader.join(10)
    finally:
        logger.handlers.clear()
        os.close(read_end)
    text = out.replace(b"x", b"").decode()
    lines = [line for line in text.splitlines() if line]
    written = [line for line in lines if line.startswith("INFO line ")]
    numbers = [int(line.split()[-1]) for line in written]
    assert numbers[0] == 0 and numbers == sorted(numbers) and len(numbers) < 500
    # Every loss is noted: once, or in parts when the writer took a record while the burst
    # was still being dropped (a loaded machine schedules it there).
    notes = [line for line in lines if line.startswith("WARNING")]
    note = re.compile(
        r"WARNING (\d+) log records were dropped: the log's output was not being read"
    )
    counts = [int(match.group(1)) for line in notes if (match := note.fullmatch(line))]
    assert notes and len(counts) == len(notes) and all(counts)
    assert sum(counts) == 500 - len(numbers)
    assert lines[-1] == "INFO after"


def test_a_server_whose_output_nobody_reads_keeps_answering(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "NIGHTSHIFT_DATA_DIR": str(tmp_path / "ns"),
        "NIGHTSHIFT_AUTH": "token",
    }
    # stdout and stderr are pipes this test never reads: uvicorn's access log fills them in
    # a few hundred requests.
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "nightshift"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=5) as http:
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
            # About 100 bytes of access log each: several times what the pipes hold.
            for _ in range(3000):
                assert http.get("/healthz").status_code == 200
    finally:
        serve.terminate()
        try:
            serve.wait(15)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(5)
        for pipe in (serve.stdout, serve.stderr):
            assert pipe is not None
            pipe.close()


_FORKED = """
import logging, os, sys
from app.log_writer import defer_log_writes

logger = logging.getLogger("forked")
logger.propagate = False
logger.setLevel(logging.INFO)
logger.addHandler(logging.StreamHandler(sys.stdout))
writer = defer_log_writes(["forked"])
logger.info("parent before")
pid = os.fork()
if pid == 0:  # as a prefork pool's child: its own writer thread writes its lines
    logger.info("child")
    writer.stop()
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
logger.info("parent after")
writer.stop()
"""


def test_a_forked_child_writes_its_own_lines() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _FORKED], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    assert sorted(lines) == sorted(["parent", "before", "child", "parent", "after"])
    assert lines[-2:] == ["parent", "after"]
