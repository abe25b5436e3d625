"""SQLAlchemy (async) stores: SQLite through aiosqlite by default, PostgreSQL through asyncpg."""
