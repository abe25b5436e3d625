"""Schema migrations with Alembic, driven from code so the installed package carries everything it needs.

Several instances may start at once: on PostgreSQL the migration runs under an advisory lock, on SQLite
under a file lock beside the database, so exactly one process migrates and the others find it done.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from ollama_gate.adapters.sql.tables import metadata

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every instance of the gateway.
_ADVISORY_LOCK_ID = 0x0_11A_6A7E
# The revision whose schema `metadata.create_all` produced before migrations existed.
_BASELINE = "0001"


def _script() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _migration_lock(connection: Connection, sqlite_path: str | None) -> Iterator[None]:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _ADVISORY_LOCK_ID})
    elif sqlite_path:
        with open(sqlite_path + ".migrate.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    else:
        yield


def upgrade(connection: Connection, sqlite_path: str | None = None, target: str = "head") -> str | None:
    """Bring the schema to `target`; returns the revision it is at afterwards."""
    with _migration_lock(connection, sqlite_path):
        _adopt_unversioned_schema(connection)
        script = _script()

        def steps(revision: Any, _context: MigrationContext) -> Any:
            return script._upgrade_revs(target, revision)

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with EnvironmentContext(config, script, fn=steps, destination_rev=target) as environment:
            environment.configure(
                connection=connection,
                target_metadata=metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                transactional_ddl=True,
            )
            with environment.begin_transaction():
                environment.run_migrations()
        if connection.in_transaction():
            connection.commit()
        return current_revision(connection)


def _adopt_unversioned_schema(connection: Connection) -> None:
    """A database made by the pre-migration gateway (create_all, no alembic_version) is the baseline."""
    tables = set(inspect(connection).get_table_names())
    if "api_keys" in tables and "alembic_version" not in tables:
        MigrationContext.configure(connection).stamp(_script(), _BASELINE)
        connection.commit()
