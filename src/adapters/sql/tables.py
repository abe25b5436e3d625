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
    Text,
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
    Column("plan", String(64), nullable=True),
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
    Column("plan", String(64), nullable=True),
    Column("queue_ms", Float, nullable=True),
    Column("request_id", String(128), nullable=True),
    Index("ix_usage_logs_user_id", "user", "id"),
    Index("ix_usage_logs_timestamp", "timestamp"),
)

plans = Table(
    "plans",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("requests", String(64), nullable=True),
    Column("tokens", String(64), nullable=True),
    Column("daily_tokens", BigInteger, nullable=True),
    Column("concurrency", Integer, nullable=True),
    Column("models", Text, nullable=True),
    Column("max_context", BigInteger, nullable=True),
    Column("max_output", BigInteger, nullable=True),
    Column("max_keep_alive", Float, nullable=True),
    Column("priority", Integer, nullable=True),
    Column("weight", Float, nullable=True),
    Column("queue_timeout", Float, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

user_plans = Table(
    "user_plans",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("plan", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_user_plans_plan", "plan"),
)

config_revision = Table(
    "config_revision",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
)

# Usage rows counted as they are written (see domain/usage_rollups.py): minutes and hours since the epoch.
usage_minutes = Table(
    "usage_minutes",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
)

usage_user_minutes = Table(
    "usage_user_minutes",
    metadata,
    Column("user", String(128), primary_key=True),
    Column("tier", String(16), primary_key=True),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
)

usage_user_hours = Table(
    "usage_user_hours",
    metadata,
    Column("hour", BigInteger, primary_key=True, autoincrement=False),
    Column("user", String(128), primary_key=True),
    Column("tier", String(16), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
)
