"""Which migration a database's schema is at, read without Alembic.

The serving process checks the schema at every start; loading Alembic for that (and Mako and Pygments
with it) would keep 9 MB of RSS for the process's whole life. Alembic is loaded only when there is
something to migrate (adapters/sql/migrate.py).
"""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

# The last migration's revision: the schema this code expects (a test checks it against Alembic's head).
SCHEMA_REVISION = "0005"


def recorded_revision(connection: Connection) -> str | None:
    """The revision Alembic recorded in the database; None when there is none, or more than one (that
    is for Alembic to sort out)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return str(versions[0]) if len(versions) == 1 else None
