"""The gateway's stored features on each database back end: SQLite and PostgreSQL, same tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama, free_port
from tests.support.gateway import GatewayProcess
from tests.support.services import create_postgres_database, drop_postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/store/gate.db"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def usage_rows(gate: GatewayProcess, expected: int) -> list[dict[str, object]]:
    """The usage rows once the background writer has flushed `expected` of them (bounded wait)."""
    deadline = time.monotonic() + 5
    while True:
        logs: list[dict[str, object]] = httpx.get(
            gate.url + "/api/usage", params={"limit": 1000}, timeout=10
        ).json()["logs"]
        if len(logs) >= expected or time.monotonic() > deadline:
            return logs


def test_keys_usage_and_restart(tmp_path: Path, fake_ollama: FakeOllama, database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    with GatewayProcess(tmp_path / "run1", ollama_url=fake_ollama.url, env=env) as gate:
        created = httpx.post(
            gate.url + "/api/keys", params={"user_id": "alice", "name": "laptop"}, timeout=10
        ).json()
        key = created["key"]
        member = httpx.post(
            gate.url + "/chat", json={"message": "hi"}, headers={"X-API-Key": key}, timeout=10
        )
        assert member.json()["user"] == "alice" and member.json()["tier"] == "member"
        stream = httpx.post(
            gate.url + "/chat/stream",
            json={"message": "hi"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert stream.status_code == 200 and stream.text.count("\n") == 3
        rows = usage_rows(gate, 2)
        assert [(r["endpoint"], r["user"], r["key_id"]) for r in rows] == [
            ("/chat/stream", "alice", created["id"]),
            ("/chat", "alice", created["id"]),
        ]

    # Everything survives a restart (a fresh working directory: only the database is shared).
    with GatewayProcess(tmp_path / "run2", ollama_url=fake_ollama.url, env=env) as gate:
        assert (
            httpx.post(
                gate.url + "/chat", json={"message": "x"}, headers={"X-API-Key": key}, timeout=10
            ).status_code
            == 200
        )
        assert len(usage_rows(gate, 3)) == 3
        listed = httpx.get(gate.url + "/api/keys", params={"user_id": "alice"}, timeout=10).json()["keys"]
        assert [k["name"] for k in listed] == ["laptop"] and listed[0]["active"] is True
        assert httpx.delete(f"{gate.url}/api/keys/{created['id']}", timeout=10).json() == {
            "id": created["id"],
            "revoked": True,
        }
        refused = httpx.post(
            gate.url + "/chat", json={"message": "x"}, headers={"X-API-Key": key}, timeout=10
        )
        assert refused.status_code == 401
        assert httpx.get(gate.url + "/api/status", timeout=10).json()["usage"]["total_requests"] == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_database_unreachable_means_503_for_keys_and_members_only(
    tmp_path: Path, fake_ollama: FakeOllama, backend: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = (
        f"sqlite+aiosqlite:///{blocker}/gate.db"
        if backend == "sqlite"
        else f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone"
    )
    with GatewayProcess(
        tmp_path, ollama_url=fake_ollama.url, env={"DATABASE_URL": url, "CONNECT_TIMEOUT": "1"}
    ) as gate:
        keys = httpx.post(gate.url + "/api/keys", params={"user_id": "alice"}, timeout=10)
        assert (keys.status_code, keys.json()) == (503, {"detail": "database unavailable"})
        member = httpx.post(
            gate.url + "/chat", json={"message": "hi"}, headers={"X-API-Key": "oa-" + "A" * 43}, timeout=10
        )
        assert (member.status_code, member.json()) == (503, {"detail": "database unavailable"})
        assert httpx.post(gate.url + "/chat", json={"message": "hi"}, timeout=10).status_code == 200
        assert httpx.get(gate.url + "/api/status", timeout=10).json()["usage"]["database_online"] is False
        # A clean stop would retry the pending row for 10 s against the dead database; not this test's subject.
        gate.kill()
