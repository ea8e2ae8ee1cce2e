"""local pulls: who merged or closed a local PR, when, and into what

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-06 03:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pull_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merge_base", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("merged_sha", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("closed_by_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("closed_at", sa.Float(), nullable=True))
        batch_op.create_foreign_key(
            "fk_pull_requests_closed_by_id_users", "users", ["closed_by_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("pull_requests", schema=None) as batch_op:
        batch_op.drop_constraint("fk_pull_requests_closed_by_id_users", type_="foreignkey")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("closed_by_id")
        batch_op.drop_column("merged_sha")
        batch_op.drop_column("merge_base")
