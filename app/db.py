"""Engines: the control DB (SQLite by default, PostgreSQL in distributed mode) and the
SQLite pragmas every file of ours gets (WAL, busy_timeout, foreign keys, IMMEDIATE writes).
"""

from __future__ import annotations

import sqlite3
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


def sqlite_engine(path: Path, *, writer: bool, pooled: bool = True) -> Engine:
    """An engine on one SQLite file. Writers open transactions with BEGIN IMMEDIATE, so a
    write never fails half-way on a lock upgrade; readers use plain BEGIN and, under WAL,
    never block the writer."""
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000},
        **({} if pooled else {"poolclass": NullPool}),
    )
    event.listen(engine, "connect", _sqlite_pragmas)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def control_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite_engine(path, writer=True)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
