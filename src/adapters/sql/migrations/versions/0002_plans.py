"""Plans: stored plans, users' assigned plans, a key's own plan, the plan on usage rows, and the
revision every instance polls to learn that plans changed.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("requests", sa.String(64), nullable=True),
        sa.Column("tokens", sa.String(64), nullable=True),
        sa.Column("daily_tokens", sa.BigInteger(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("models", sa.Text(), nullable=True),
        sa.Column("max_context", sa.BigInteger(), nullable=True),
        sa.Column("max_output", sa.BigInteger(), nullable=True),
        sa.Column("max_keep_alive", sa.Float(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("queue_timeout", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "user_plans",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_user_plans_plan", "user_plans", ["plan"])
    revisions = op.create_table(
        "config_revision",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(revisions, [{"id": 1, "revision": 0}])
    op.add_column("api_keys", sa.Column("plan", sa.String(64), nullable=True))
    op.add_column("usage_logs", sa.Column("plan", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_logs") as table:
        table.drop_column("plan")
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("plan")
    op.drop_table("config_revision")
    op.drop_index("ix_user_plans_plan", "user_plans")
    op.drop_table("user_plans")
    op.drop_table("plans")
