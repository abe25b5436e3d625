from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def gateway(tmp_path: Path, fake_ollama: FakeOllama) -> Iterator[GatewayProcess]:
    """A gateway on SQLite in tmp_path, in front of the fake Ollama, with default limits."""
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url) as gate:
        yield gate
