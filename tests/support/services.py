"""PostgreSQL and Redis for the tests that need them.

URLs come from OLLAMA_GATE_TEST_POSTGRES_URL / OLLAMA_GATE_TEST_REDIS_URL. Without them a test skips with
the reason, unless OLLAMA_GATE_TEST_REQUIRE_SERVICES=1 (CI), where a missing service fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
import redis

from tests.support.fake_ollama import free_port

POSTGRES_ENV = "OLLAMA_GATE_TEST_POSTGRES_URL"
REDIS_ENV = "OLLAMA_GATE_TEST_REDIS_URL"


def _unavailable(message: str) -> NoReturn:
    """Skip the test, or fail it where the services are required (CI)."""
    if os.environ.get("OLLAMA_GATE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def installed_tool(command: str) -> str:
    """The path of a program the suite drives (a browser, a load generator); `make test` installs them."""
    found = shutil.which(command)
    if found is None:
        _unavailable(f"{command} is missing: apt-get install -y {command} (make test installs it as root)")
    return found


def _missing(variable: str, what: str) -> NoReturn:
    _unavailable(f"{what} not configured: set {variable} (CI sets it; see README, Tests)")


def postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        _missing(POSTGRES_ENV, "PostgreSQL")
    return url


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _run_as_admin(admin: str, statement: str) -> None:
    """Run one statement on the test server's admin database (CREATE/DROP DATABASE need their own)."""

    async def run() -> None:
        connection = await asyncpg.connect(_asyncpg_dsn(admin), timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def create_postgres_database() -> str:
    """A new empty database on the test server; returns its SQLAlchemy URL."""
    admin = postgres_admin_url()
    name = f"og_test_{uuid.uuid4().hex[:12]}"
    try:
        _run_as_admin(admin, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as error:
        _unavailable(f"PostgreSQL at {admin} unreachable: {error}")
    return admin.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    _run_as_admin(postgres_admin_url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new empty database on the test server for the `with` block; its SQLAlchemy URL."""
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def shared_redis_url() -> str:
    """The test Redis, flushed (it is a database reserved for the tests)."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        _missing(REDIS_ENV, "Redis")
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.flushdb()
        client.close()
    except redis.RedisError as error:
        _unavailable(f"Redis at {url} unreachable: {error}")
    return url


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will (outages)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("PATH", "redis-server")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
