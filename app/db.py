"""Engines: the control DB (SQLite by default, PostgreSQL in distributed mode) and the
SQLite pragmas every file of ours gets (WAL, busy_timeout, foreign keys, IMMEDIATE writes).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

SQLITE_BUSY_MS = 10_000


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # Take transaction control away from pysqlite so BEGIN is ours (see `_begin`).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with our pragmas, shareable across threads (callers lock).

    Autocommit at the driver (`isolation_level=None`): transactions are the caller's own
    `BEGIN IMMEDIATE` ... `COMMIT`, as with the engines below. For files opened per session,
    where building an engine and its pool would cost more than the work itself.
    """
    conn = sqlite3.connect(
        path, timeout=SQLITE_BUSY_MS / 1000, check_same_thread=False, isolation_level=None
    )
    _sqlite_pragmas(conn, None)
    return conn


class WriteLock:
    """The write lock of one SQLite file: a lock in this process and, while it is held, an
    exclusive `flock` on `<file>-writelock`, so writers queue on locks that wake the next one
    at once instead of polling in SQLite's busy handler (which sleeps up to 100 ms between
    tries and turns contention into latency), in this process and across the processes of
    `serve --processes N` alike."""

    def __init__(self, path: Path) -> None:
        self.path = Path(f"{path}-writelock")
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def acquire(self) -> None:
        self._lock.acquire()
        try:
            if self._depth == 0:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def _file(self) -> int:
        """This process's descriptor (a forked child opens its own: a shared one would let
        parent and child hold the lock at once)."""
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
            weakref.finalize(self, os.close, self._fd)
        return self._fd


def _writer_connection(lock: WriteLock) -> type[sqlite3.Connection]:
    """A sqlite3 connection class whose write transactions take `lock` first."""

    class WriterConnection(sqlite3.Connection):
        _held = 0

        def hold(self) -> None:
            lock.acquire()
            self._held += 1

        def _let_go(self) -> None:
            while self._held:
                self._held -= 1
                lock.release()

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self._let_go()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self._let_go()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._let_go()

    return WriterConnection


POOL_SIZE = 32
POOL_OVERFLOW = 64


def sqlite_engine(path: Path, *, writer: bool, pooled: bool = True) -> Engine:
    """An engine on one SQLite file. Writers open transactions with BEGIN IMMEDIATE, so a
    write never fails half-way on a lock upgrade; readers use plain BEGIN and, under WAL,
    never block the writer."""
    connect_args: dict[str, Any] = {
        "check_same_thread": False,
        "timeout": SQLITE_BUSY_MS / 1000,
    }
    if writer:
        connect_args["factory"] = _writer_connection(WriteLock(path))
    # Up to POOL_SIZE connections stay open between uses: the API's and the runners' thread
    # pools touch the control DB from dozens of threads at once, and a connection beyond the
    # pool's size would be opened (with its pragmas) and closed around every use.
    pool: dict[str, Any] = (
        {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
        if pooled
        else {"poolclass": NullPool}
    )
    engine = create_engine(f"sqlite:///{path}", connect_args=connect_args, **pool)
    event.listen(engine, "connect", _sqlite_pragmas)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if writer:
            raw = conn.connection.dbapi_connection
            raw.hold()
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                raw.rollback()
                raise
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


_READERS: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_READERS_GUARD = threading.Lock()


def _query_only(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA query_only=ON")  # a write here is an error, never a lock wait


def reader(engine: Engine) -> Engine:
    """The read-only companion of a control-DB engine, for reads on hot paths.

    SQLite: a second engine on the same file whose transactions begin with plain BEGIN and
    whose connections refuse writes (`query_only`), so under WAL a read never queues for the
    writer's lock behind index updates and lease renewals, and still sees every committed
    write. Other databases: the engine itself (their reads never take a write lock).
    """
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return engine
    with _READERS_GUARD:
        found = _READERS.get(engine)
        if found is None:
            found = sqlite_engine(Path(engine.url.database), writer=False)
            event.listen(found, "connect", _query_only)
            # Closed with its writer: `engine.dispose()` at shutdown closes both.
            event.listen(engine, "engine_disposed", lambda _e, r=found: r.dispose())
            _READERS[engine] = found
        return found


def control_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite_engine(path, writer=True)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
