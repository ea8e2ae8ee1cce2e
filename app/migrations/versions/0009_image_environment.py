"""images: the digest of the declared image each image was built on

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A control DB adopted from before migrations gets its missing `images` table from the
    # current model, which already has the column.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("images")}
    if "environment_digest" in columns:
        return
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("environment_digest", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("environment_digest")
