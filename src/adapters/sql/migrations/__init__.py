"""Alembic migrations, run programmatically (see adapters/sql/migrate.py): no alembic.ini, no env.py."""
