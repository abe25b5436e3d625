"""Two gateways sharing one PostgreSQL database (made for the test) and the test Redis."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support.gateway import GatewayProcess
from tests.support.services import postgres_database, shared_redis_url


@contextlib.contextmanager
def gateway_pair(
    workdir: Path, ollama_url: str, env: Mapping[str, str]
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Both started with `env` plus the shared database and Redis; stopped (and the database dropped)
    at the end of the block."""
    with postgres_database() as database:
        shared = {"DATABASE_URL": database, "REDIS_URL": shared_redis_url(), **env}
        first = GatewayProcess(workdir / "a", ollama_url=ollama_url, env=shared)
        second = GatewayProcess(workdir / "b", ollama_url=ollama_url, env=shared)
        with first, second:
            yield first, second
