from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

# BigInteger ids become plain INTEGER PRIMARY KEY (rowid aliases) on SQLite.
_Id = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("user_id", String(128), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

usage_logs = Table(
    "usage_logs",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("user", String(128), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("key_id", BigInteger, nullable=True),
    Column("client_ip", String(64), nullable=False),
    Column("endpoint", String(128), nullable=False),
    Column("model", String(256), nullable=True),
    Column("status", Integer, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Index("ix_usage_logs_user_id", "user", "id"),
)
