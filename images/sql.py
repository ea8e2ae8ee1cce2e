"""SQL helpers for the layers that keep tables in the control DB (images, app)."""

from __future__ import annotations

from sqlalchemy import Table, inspect
from sqlmodel import SQLModel


def table_of(model: type[SQLModel]) -> Table:
    """The `Table` of a SQLModel table class (`table=True`), typed: SQLModel sets
    `__table__` on such classes, and its type stubs do not declare it."""
    table = inspect(model).local_table
    assert isinstance(table, Table), f"{model.__name__} is not a table model"
    return table
