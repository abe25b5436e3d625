"""Usage counted per minute and per user-hour as rows are written, for the console's charts.

The rows already stored are counted into the new tables here, in the migration's transaction (one
GROUP BY pass over usage_logs per table, seconds per million rows); the gateway's writer buffers its
rows meanwhile, as for 0004.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TOKENS = "COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)"
_ERROR = "CASE WHEN outcome = 'upstream_error' THEN 1 ELSE 0 END"


def _epoch(dialect: str) -> str:
    if dialect == "sqlite":  # stored as UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'
        return "CAST(strftime('%s', substr(\"timestamp\", 1, 19)) AS INTEGER)"
    return 'CAST(floor(extract(epoch FROM "timestamp")) AS BIGINT)'


def upgrade() -> None:
    op.create_table(
        "usage_minutes",
        sa.Column("minute", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "usage_user_minutes",
        sa.Column("user", sa.String(128), primary_key=True),
        sa.Column("tier", sa.String(16), primary_key=True),
        sa.Column("minute", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "usage_user_hours",
        sa.Column("hour", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("user", sa.String(128), primary_key=True),
        sa.Column("tier", sa.String(16), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
    )
    # The statements are made of this module's constants only (S608 below): no value comes from outside.
    epoch = _epoch(op.get_bind().dialect.name)
    op.execute(
        f"INSERT INTO usage_minutes (minute, requests, tokens) "  # noqa: S608
        f"SELECT {epoch} / 60, COUNT(*), SUM({_TOKENS}) FROM usage_logs GROUP BY {epoch} / 60"
    )
    op.execute(
        f'INSERT INTO usage_user_minutes ("user", tier, minute, requests, tokens) '  # noqa: S608
        f'SELECT "user", tier, {epoch} / 60, COUNT(*), SUM({_TOKENS}) FROM usage_logs '
        f'GROUP BY "user", tier, {epoch} / 60'
    )
    op.execute(
        f'INSERT INTO usage_user_hours (hour, "user", tier, requests, tokens, errors) '  # noqa: S608
        f'SELECT {epoch} / 3600, "user", tier, COUNT(*), SUM({_TOKENS}), SUM({_ERROR}) FROM usage_logs '
        f'GROUP BY {epoch} / 3600, "user", tier'
    )


def downgrade() -> None:
    op.drop_table("usage_user_hours")
    op.drop_table("usage_user_minutes")
    op.drop_table("usage_minutes")
