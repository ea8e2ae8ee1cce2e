"""session model and usage: the model a session (or a Slack request) runs on, and the
tokens and estimated cost of sessions and prompts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 03:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USAGE = ("input_tokens", "output_tokens", "cached_tokens")


def _usage_columns() -> list[sa.Column[object]]:
    columns: list[sa.Column[object]] = [
        sa.Column(name, sa.Integer(), nullable=False, server_default="0") for name in USAGE
    ]
    columns.append(sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"))
    return columns


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=200), nullable=True))
        for column in _usage_columns():
            batch_op.add_column(column)
    with op.batch_alter_table("prompt_index", schema=None) as batch_op:
        for column in _usage_columns():
            batch_op.add_column(column)
    # A control DB adopted from before migrations had slack_requests made from today's models
    # (`app.migrate._adopt`): it may have the column already.
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("slack_requests")}
    if "model" not in existing:
        with op.batch_alter_table("slack_requests", schema=None) as batch_op:
            batch_op.add_column(sa.Column("model", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_requests", schema=None) as batch_op:
        batch_op.drop_column("model")
    for table in ("prompt_index", "sessions"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("cost_usd")
            for name in reversed(USAGE):
                batch_op.drop_column(name)
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("model")
