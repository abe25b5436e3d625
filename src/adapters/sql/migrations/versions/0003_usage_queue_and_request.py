"""Usage rows: the time a request waited for a GPU slot, and the request id it was answered with.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_logs", sa.Column("queue_ms", sa.Float(), nullable=True))
    op.add_column("usage_logs", sa.Column("request_id", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_logs") as table:
        table.drop_column("request_id")
        table.drop_column("queue_ms")
