"""images: each image's size on disk, and the size of the declared image's shared root

Revision ID: 0010
Revises: 0012 (numbered before 0011 and 0012 but landed after them, so a control DB already
at 0012 still gets it)
Create Date: 2026-12-06 04:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("size_bytes", "environment_size_bytes")


def upgrade() -> None:
    # A control DB adopted from before migrations gets its missing `images` table from the
    # current model, which already has the columns.
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("images")}
    missing = [name for name in COLUMNS if name not in present]
    if not missing:
        return
    with op.batch_alter_table("images", schema=None) as batch_op:
        for name in missing:
            batch_op.add_column(sa.Column(name, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
