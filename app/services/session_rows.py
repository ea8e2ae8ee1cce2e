"""Core statements on the session index for the hot paths: built once, run without the ORM.

A session's creation holds the control DB's write lock (SQLite) from its cap count to its
commit; its rows go in as plain `INSERT`s, built here once per table, so the lock is held for
the statements alone and not for a unit of work's bookkeeping.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, Insert, Select, Table, bindparam, func, insert, or_
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.elements import BindParameter
from sqlmodel import SQLModel

from app.models import Session
from workers.events import ACTIVE_STATUSES


@cache
def columns_query(names: tuple[str, ...]) -> Select[Any]:
    """SELECT those columns of one session's index row, built once per set of names."""
    table = Session.__table__.c  # type: ignore[attr-defined]
    return sa_select(*(table[name] for name in names)).where(table.id == bindparam("id"))


@cache
def active_count_query() -> Select[Any]:
    """How many sessions of one author are not over (built once)."""
    table = Session.__table__.c  # type: ignore[attr-defined]
    active = table.status.in_(sorted(ACTIVE_STATUSES))
    return sa_select(func.count()).where(table.author_id == bindparam("author"), active)


@cache
def lease_update(returning: tuple[str, ...]) -> ReturningUpdate[Any]:
    """Take one session's lease for runner `runner` until `expires`, when it is free, expired
    (before `now`) or that runner's already; RETURNING those columns of the row (no row: the
    lease is someone else's, or no such session). Built once per set of columns."""
    table = Session.__table__.c  # type: ignore[attr-defined]
    runner: BindParameter[str] = bindparam("runner")
    statement = (
        sa_update(Session.__table__)  # type: ignore[attr-defined]
        .where(table.id == bindparam("k_id"))
        .where(
            or_(
                table.lease_owner.is_(None),
                table.lease_expires_at < bindparam("now"),
                table.lease_owner == runner,
            )
        )
        .values(lease_owner=runner, lease_expires_at=bindparam("expires"))
    )
    return statement.returning(*(table[name] for name in returning))


@cache
def _insert(table: Table) -> Insert:
    return insert(table)


def insert_rows(conn: Connection, *rows: SQLModel) -> None:
    """INSERT table-model rows, in order, as they stand (their defaults already filled in by
    the model). A column left None is left out, so it takes the column's own default (NULL),
    as the ORM would have written it."""
    for row in rows:
        table: Table = type(row).__table__  # type: ignore[attr-defined]
        values = {c.name: v for c in table.columns if (v := getattr(row, c.name)) is not None}
        conn.execute(_insert(table), values)
