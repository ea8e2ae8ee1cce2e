"""event state columns: the last push, the last verify run and PR failures of a session, and
the checks of a local PR, kept where they are read instead of scanned out of the event log

Rows from before this revision are filled from their session's events on first read (see
`app.services.session_index.replay_columns`), by the process that holds the session file: this
migration only adds the columns, so it stays fast under the migration lock and never needs the
data dir.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 17:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_push", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("last_verify", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("pr_failures", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("pull_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checks", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("checks_sha", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pull_requests", schema=None) as batch_op:
        batch_op.drop_column("checks_sha")
        batch_op.drop_column("checks")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("pr_failures")
        batch_op.drop_column("last_verify")
        batch_op.drop_column("last_push")
