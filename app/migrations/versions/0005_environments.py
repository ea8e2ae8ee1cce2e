"""environments: a repo's declared image or Dockerfile

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-06 01:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("repos", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("dockerfile", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("context", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("repos", schema=None) as batch_op:
        batch_op.drop_column("context")
        batch_op.drop_column("dockerfile")
        batch_op.drop_column("image")
