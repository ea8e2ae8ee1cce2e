"""github triggers: mentions, reviews and failing checks that ask for work; a repo's CI-fix cap

Revision ID: 0007
Revises: 0008
Create Date: 2026-12-06 03:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("repos", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ci_fix_attempts", sa.Integer(), nullable=True))
    op.create_table(
        "github_triggers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("github_user_id", sa.BigInteger(), nullable=False),
        sa.Column("login", sa.String(length=100), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("github_triggers", schema=None) as batch_op:
        batch_op.create_index("ix_github_triggers_session", ["session_id"], unique=False)
        batch_op.create_index(
            "ix_github_triggers_user_state", ["github_user_id", "state"], unique=False
        )
    op.create_table(
        "github_pr_stats",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("pushes", sa.Integer(), nullable=False),
        sa.Column("agent_commits", sa.Integer(), nullable=False),
        sa.Column("pr_commits", sa.Integer(), nullable=True),
        sa.Column("opened_at", sa.Float(), nullable=True),
        sa.Column("merged_at", sa.Float(), nullable=True),
        sa.Column("reviews", sa.Integer(), nullable=False),
        sa.Column("approvals", sa.Integer(), nullable=False),
        sa.Column("changes_requested", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_table(
        "github_ci_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=False),
        sa.Column("head_sha", sa.String(length=64), nullable=False),
        sa.Column("check_name", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_id", "head_sha", name="uq_github_ci_head"),
    )
    with op.batch_alter_table("github_ci_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_github_ci_attempts_session_id"), ["session_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("github_ci_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_github_ci_attempts_session_id"))
    op.drop_table("github_ci_attempts")
    op.drop_table("github_pr_stats")
    with op.batch_alter_table("github_triggers", schema=None) as batch_op:
        batch_op.drop_index("ix_github_triggers_user_state")
        batch_op.drop_index("ix_github_triggers_session")
    op.drop_table("github_triggers")
    with op.batch_alter_table("repos", schema=None) as batch_op:
        batch_op.drop_column("ci_fix_attempts")
