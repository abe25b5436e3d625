"""What the serving process leaves unloaded: on its embedded default (SQLite, no Redis) and a database at
the schema's revision, neither redis-py, asyncpg nor Alembic (together about 21 MB of RSS for its whole
life). Run in a process of its own: this test process has them all loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_gate.adapters.sql import migrate
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.schema_revision import SCHEMA_REVISION
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import gateway_environment
from tests.support.services import shared_redis_url

OPTIONAL = ("alembic", "redis", "asyncpg")

# The app started and stopped through the ASGI lifespan, as the server does; then what it loaded.
_SERVE = """
import asyncio, json, sys
from ollama_gate.entrypoints.app import create_app
from ollama_gate.entrypoints.config import load_settings
from ollama_gate.entrypoints.container import build_container

async def main():
    app = create_app(build_container(load_settings()))
    events = asyncio.Queue()
    await events.put({"type": "lifespan.startup"})
    said = []
    async def send(message):
        said.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            await events.put({"type": "lifespan.shutdown"})
    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, events.get, send)
    print(json.dumps({"said": said, "modules": sorted({m.split(".")[0] for m in sys.modules})}))

asyncio.run(main())
"""


def started(workdir: Path, values: dict[str, str]) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _SERVE],
        cwd=workdir,
        env=gateway_environment(values),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout.splitlines()[-1])
    assert result["said"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"], done.stderr
    return result


def test_the_schema_revision_is_the_migrations_head() -> None:
    assert migrate.head_revision() == SCHEMA_REVISION


async def test_an_embedded_gateway_on_a_current_database_loads_no_redis_postgres_or_alembic(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}"
    database = Database(url)
    assert await database.upgrade() == SCHEMA_REVISION
    await database.close()
    values = {"DATABASE_URL": url, "OLLAMA_URL": fake_ollama.url}
    loaded = set(started(tmp_path, values)["modules"])
    assert not loaded & set(OPTIONAL), loaded & set(OPTIONAL)


async def test_a_new_database_is_migrated_by_the_gateway_itself(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    loaded = set(started(tmp_path, {"DATABASE_URL": url, "OLLAMA_URL": fake_ollama.url})["modules"])
    assert "alembic" in loaded  # it had something to migrate
    database = Database(url)
    assert await database.current_revision() == SCHEMA_REVISION
    await database.close()


@pytest.mark.redis
def test_with_redis_configured_the_gateway_loads_redis(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    values = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}",
        "OLLAMA_URL": fake_ollama.url,
        "REDIS_URL": shared_redis_url(),
    }
    assert "redis" in started(tmp_path, values)["modules"]
