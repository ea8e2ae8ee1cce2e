"""A model that turns its own tools on the host: FIFOs and sockets made with `run`, then handed
to the file tools, end to end through the API, the executor and a bubblewrap sandbox. No file
tool may block a host thread, so a session and the ones after it keep running, and a stop
frees everything the session held."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, make_repo, wait_for
from tests.fakes.llm import Call, ScriptBook, Turn

pytestmark = pytest.mark.slow

FIFO_READS = 70
"""More than the executor's 64 threads: each read that hung used to strand one of them."""
MAKE_SPECIAL = (
    "mkfifo trap && python3 -c "
    "'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")' && echo made"
)


def _threads_in_file_tools() -> list[str]:
    """Names of threads whose stack is inside a file operation on a sandbox's tree."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return [
        names.get(ident, str(ident))
        for ident, frame in sys._current_frames().items()
        if any(
            f.f_code.co_filename.endswith("pathsafe.py")
            for f in _stack(frame)  # a thread parked in ConfinedTree.read/write/listdir
        )
    ]


def _stack(frame: Any) -> list[Any]:
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def test_fifo_reads_fail_fast_and_the_next_session_runs(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "fifo trap",
        Turn.tool("run", "Setting the trap.", command=MAKE_SPECIAL),
        Turn(calls=[Call("read_file", {"path": "trap"}) for _ in range(FIFO_READS)]),
        Turn(
            calls=[
                Call("write_file", {"path": "trap", "content": "x"}),
                Call("edit_file", {"path": "trap", "old_text": "a", "new_text": "b"}),
                Call("read_file", {"path": "sock"}),
                Call("write_file", {"path": "sock", "content": "x"}),
                Call("list_files", {"path": "trap"}),
                Call("list_files", {"path": ".", "recursive": True}),
            ]
        ),
        Turn.tool("run", command="rm trap sock"),
        Turn.tool("finish", summary="Tried the trap."),
    )
    session = api.create("proj", "fifo trap")
    done = api.wait_status(session["id"], "finished", "failed", timeout=60)
    assert done["status"] == "finished", api.events(session["id"])
    results = [e for e in api.events(session["id"]) if e["type"] == "tool_result"]
    reads = [r for r in results if r["name"] == "read_file" and "trap" in r["output"]]
    assert len(reads) == FIFO_READS
    assert all(r["is_error"] and r["output"] == "trap is a FIFO, not a regular file" for r in reads)
    by_name = {(r["name"], r["output"].split()[0]): r for r in results}
    for name, path, what in (
        ("write_file", "trap", "a FIFO, not a regular file"),
        ("edit_file", "trap", "a FIFO, not a regular file"),
        ("read_file", "sock", "a socket, not a regular file"),
        ("write_file", "sock", "a socket, not a regular file"),
        ("list_files", "trap", "a FIFO, not a directory"),
    ):
        result = by_name[(name, path)]
        assert result["is_error"] and result["output"] == f"{path} is {what}", result
    listing = next(r for r in results if r["name"] == "list_files" and not r["is_error"])
    assert {"trap", "sock", "README.md"} <= set(listing["output"].splitlines())
    assert _threads_in_file_tools() == []
    # The next session, on the same executor, runs as if nothing happened.
    openai_fake.script(
        "after the trap",
        Turn.tool("read_file", path="README.md"),
        Turn.tool("write_file", path="after.txt", content="ok\n"),
        Turn.tool("finish", summary="Wrote after.txt."),
    )
    after = api.create("proj", "after the trap")
    assert api.wait_status(after["id"], "finished", "failed")["status"] == "finished"


def test_stop_during_a_blocked_tool_frees_the_session(
    api: ApiClient, runtime: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "blocked",
        Turn.tool("run", command=MAKE_SPECIAL),
        Turn.tool("read_file", path="trap"),
        Turn.tool("run", command="cat trap"),  # blocks inside the sandbox until stopped
        Turn.tool("finish", summary="never"),
    )
    session = api.create("proj", "blocked")

    def blocked() -> bool:
        # Today the `cat`; before file tools stopped blocking, already the read.
        calls = [e for e in api.events(session["id"]) if e["type"] == "tool_call"]
        return len(calls) == 3 or (len(calls) == 2 and calls[-1]["name"] == "read_file")

    wait_for(blocked, 30, "the blocking tool call")
    time.sleep(0.5)  # let the call reach the point where it blocks
    ready = next(e for e in api.events(session["id"]) if e["type"] == "sandbox_ready")
    r = api.http.post(f"/api/sessions/{session['id']}/stop")
    assert r.status_code == 200
    assert api.wait_status(session["id"], "stopped", timeout=15)["status"] == "stopped"
    wait_for(
        lambda: ready["sandbox_id"] not in getattr(runtime.backend, "live", {}) or None,
        15,
        "the sandbox to be terminated",
    )
    assert _threads_in_file_tools() == []
    results = [e for e in api.events(session["id"]) if e["type"] == "tool_result"]
    read = next(e for e in results if e["name"] == "read_file")
    assert read["output"] == "trap is a FIFO, not a regular file"
