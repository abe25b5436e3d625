from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import GatewayProcess
from tests.support.services import postgres_database


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def gateway(tmp_path: Path, fake_ollama: FakeOllama) -> Iterator[GatewayProcess]:
    """A gateway on SQLite in tmp_path, in front of the fake Ollama, with default limits."""
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url) as gate:
        yield gate


@pytest.fixture(scope="module")
def module_ollama() -> Iterator[FakeOllama]:
    """One fake Ollama for a whole module (a module may override it, e.g. with other models)."""
    with FakeOllama() as fake:
        yield fake


@pytest.fixture(scope="module")
def module_ollama_server() -> Iterator[FakeOllamaServer]:
    """One fake Ollama with the rest of its API and the OpenAI one, for a whole module."""
    with FakeOllamaServer() as server:
        yield server


def gateway_per_module(
    env: Mapping[str, str] | None = None, upstream: str = "module_ollama"
) -> Callable[..., Any]:
    """A module-scoped fixture: one gateway with `env`, in front of the fake the fixture named `upstream`
    gives, for the whole module. The fixture takes the name it is assigned to: `gate = gateway_per_module()`.
    """

    @pytest.fixture(scope="module")
    def module_gateway(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[GatewayProcess]:
        fake = request.getfixturevalue(upstream)
        workdir = tmp_path_factory.mktemp(
            f"{request.module.__name__.rsplit('.', 1)[-1]}-{request.fixturename}"
        )
        with GatewayProcess(workdir, ollama_url=fake.url, env=dict(env or {})) as gate:
            yield gate

    return module_gateway


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each back end: SQLite in tmp_path (always), PostgreSQL (when configured)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/store/gate.db"
        return
    with postgres_database() as url:
        yield url
