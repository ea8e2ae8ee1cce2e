"""The control DB's read-only companion (`app.db.reader`): reads on hot paths never queue for
the writer's lock, see every committed write, and cannot write."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db import control_engine, reader


def test_a_read_does_not_wait_for_an_open_write_and_sees_what_was_committed(
    tmp_path: Path,
) -> None:
    engine = control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(text("INSERT INTO t (name) VALUES ('first')"))
        holding, done = threading.Event(), threading.Event()

        def writer() -> None:
            # A write transaction held open: on the writer engine every transaction takes the
            # process's write lock (and BEGIN IMMEDIATE) until it ends.
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t (name) VALUES ('pending')"))
                holding.set()
                done.wait(60)

        thread = threading.Thread(target=writer)
        thread.start()
        assert holding.wait(30)
        try:
            # Through the writer engine this read would wait for the lock the writer holds
            # until `done` is set, which only happens after it: the test would hang.
            with reader(engine).connect() as conn:
                names = conn.execute(text("SELECT name FROM t ORDER BY id")).scalars().all()
        finally:
            done.set()
            thread.join(30)
        assert names == ["first"]  # the open write is not seen before it commits
        with reader(engine).connect() as conn:
            after = conn.execute(text("SELECT name FROM t ORDER BY id")).scalars().all()
        assert after == ["first", "pending"]  # and is, once committed
        assert reader(engine) is reader(engine)
        with (
            pytest.raises(OperationalError, match=r"readonly|read-only|query_only"),
            reader(engine).begin() as conn,
        ):
            conn.execute(text("INSERT INTO t (name) VALUES ('sneaked')"))
    finally:
        engine.dispose()


def test_a_server_database_reads_through_its_own_engine() -> None:
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://127.0.0.1:5432/test")
    assert reader(engine) is engine


_OTHER_PROCESS = """
import fcntl, sys
fd = open(sys.argv[1], "a")
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("held")
else:
    print("free")
"""


def test_a_write_holds_the_files_write_lock_for_other_processes_too(tmp_path: Path) -> None:
    """`serve --processes N` on SQLite: a writer in another process waits on the file's
    write lock (woken when it is let go) instead of polling in SQLite's busy handler, so the
    lock is held, for every process, exactly while a write transaction is open."""
    import subprocess
    import sys

    engine = control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    lock_file = tmp_path / "control.db-writelock"

    def seen_from_another_process() -> str:
        probe = [sys.executable, "-c", _OTHER_PROCESS, str(lock_file)]
        return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()

    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            assert seen_from_another_process() == "held"
        assert seen_from_another_process() == "free"
        with pytest.raises(OperationalError), engine.begin() as conn:
            conn.execute(text("INSERT INTO missing VALUES (1)"))  # a failed write lets go too
        assert seen_from_another_process() == "free"
    finally:
        engine.dispose()
