"""session owners: which API process owns a session when several serve the same control DB;
sessions indexed by their last change (the live list polls it)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_owners",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("process_id", sa.String(length=200), nullable=False),
        sa.Column("peer_url", sa.String(length=500), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index("ix_session_owners_process", "session_owners", ["process_id"])
    op.create_index("ix_sessions_updated", "sessions", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_updated", table_name="sessions")
    op.drop_index("ix_session_owners_process", table_name="session_owners")
    op.drop_table("session_owners")
