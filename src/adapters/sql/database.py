"""The engine, schema creation, and the one place database failures become StoreUnavailable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Executable, Row, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ollama_gate.adapters.sql.schema_revision import SCHEMA_REVISION, recorded_revision
from ollama_gate.domain.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout, OSError, asyncio.TimeoutError)


def _enable_sqlite_concurrency(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; the busy timeout waits out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """One engine per process. Pending migrations are applied on first use (with `auto_migrate`), so a
    database that is down at start-up does not stop the gateway: anonymous chat works and the stores
    answer 503 until it is back."""

    def __init__(
        self, url: str, connect_timeout: float = 5.0, auto_migrate: bool = True, query_timeout: float = 2.0
    ) -> None:
        self.url = url
        self.query_timeout = query_timeout
        self.auto_migrate = auto_migrate
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.sqlite_path: str | None = None
        connect_args: dict[str, Any] = {}
        if self.is_sqlite:
            self._ensure_sqlite_directory(parsed.database)
            if parsed.database and parsed.database != ":memory:":
                self.sqlite_path = parsed.database
            connect_args["timeout"] = 5
        else:
            connect_args["timeout"] = connect_timeout
        # A ping before each checkout finds a server that dropped an idle connection; a SQLite file has
        # no server, and the ping would be one more statement (and thread hop) per transaction.
        self.engine: AsyncEngine = create_async_engine(
            url, connect_args=connect_args, pool_pre_ping=not self.is_sqlite
        )
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _enable_sqlite_concurrency)
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self.online = True  # as the last transaction found it (what the metrics and status read)

    @staticmethod
    def _ensure_sqlite_directory(database: str | None) -> None:
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                log.error("cannot create the directory for %s: %s", database, error)

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:  # another task may have set it meanwhile
                return  # type: ignore[unreachable]
            if self.auto_migrate:
                await self.upgrade()
            else:
                await self._warn_if_behind()
            self._schema_ready = True

    async def upgrade(self) -> str | None:
        """Apply pending migrations; returns the revision the database is at. A database already at the
        schema's revision is only read: Alembic is loaded only when there is something to migrate."""
        if await self._on_connection(recorded_revision) == SCHEMA_REVISION:
            return SCHEMA_REVISION
        from ollama_gate.adapters.sql import migrate

        return await self._on_connection(migrate.upgrade, self.sqlite_path)

    async def current_revision(self) -> str | None:
        """The revision as Alembic reads it (the CLI's `db current`)."""
        from ollama_gate.adapters.sql import migrate

        return await self._on_connection(migrate.current_revision)

    async def _on_connection(self, work: Callable[..., T], *args: Any) -> T:
        """`work(connection, *args)` on a connection of its own, outside any transaction of ours."""
        try:
            async with self.engine.connect() as connection:
                return await connection.run_sync(work, *args)
        except _UNAVAILABLE as error:
            raise StoreUnavailable() from error

    async def _warn_if_behind(self) -> None:
        current = await self._on_connection(recorded_revision)
        if current != SCHEMA_REVISION:
            log.error(
                "database schema is at %s, the gateway needs %s: run `ollama-gate db upgrade`",
                current,
                SCHEMA_REVISION,
            )

    async def try_ensure_schema(self) -> bool:
        try:
            await self.ensure_schema()
        except StoreUnavailable as error:
            log.error(
                "database unavailable at start-up (%s): key endpoints answer 503 until it is back",
                error.__cause__,
            )
            return False
        return True

    @asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection]:
        """One transaction, bounded by `timeout` seconds (default `query_timeout`) from the first
        connection attempt to the commit: a database whose TCP connection is open but silent makes the
        caller wait that long, then StoreUnavailable, never longer."""
        try:
            await self.ensure_schema()
            async with asyncio.timeout(self.query_timeout if timeout is None else timeout):
                async with self.engine.begin() as connection:
                    yield connection
        except _UNAVAILABLE as error:
            self.online = False
            raise StoreUnavailable() from error
        except StoreUnavailable:
            self.online = False
            raise
        self.online = True

    async def stream(
        self, statement: Executable, chunk_size: int, chunk_timeout: float = 30.0
    ) -> AsyncGenerator[Sequence[Row[Any]], None]:
        """The rows of `statement` in chunks, from a server-side cursor (asyncpg) or a stepped statement
        (SQLite): memory holds one chunk, however many rows there are. There is no bound on the whole (an
        export of millions of rows takes as long as it takes), but each chunk must arrive within
        `chunk_timeout` seconds, else StoreUnavailable. Closing the iterator closes the cursor and gives the
        connection back."""
        await self.ensure_schema()
        try:
            async with self.engine.connect() as connection:
                async with asyncio.timeout(chunk_timeout):
                    result = await connection.stream(statement.execution_options(yield_per=chunk_size))
                try:
                    while True:
                        async with asyncio.timeout(chunk_timeout):
                            rows = await result.fetchmany(chunk_size)
                        if not rows:
                            return
                        yield rows
                finally:
                    await result.close()
        except _UNAVAILABLE as error:
            raise StoreUnavailable() from error

    async def start(self) -> None:
        await self.try_ensure_schema()

    async def close(self) -> None:
        await self.engine.dispose()
