"""github: the agent's share of the lines added to base branches, and follow-ups per PR

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-06 04:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("github_pr_stats", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("follow_ups", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "github_agent_commits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_id", "sha", name="uq_github_agent_commit"),
    )
    with op.batch_alter_table("github_agent_commits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_github_agent_commits_sha"), ["sha"], unique=False)
    op.create_table(
        "github_base_commits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("additions", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=300), nullable=True),
        sa.Column("pushed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("repo", "sha", name="uq_github_base_commit"),
    )
    with op.batch_alter_table("github_base_commits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_github_base_commits_sha"), ["sha"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_github_base_commits_pushed_at"), ["pushed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("github_base_commits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_github_base_commits_pushed_at"))
        batch_op.drop_index(batch_op.f("ix_github_base_commits_sha"))
    op.drop_table("github_base_commits")
    with op.batch_alter_table("github_agent_commits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_github_agent_commits_sha"))
    op.drop_table("github_agent_commits")
    with op.batch_alter_table("github_pr_stats", schema=None) as batch_op:
        batch_op.drop_column("follow_ups")
