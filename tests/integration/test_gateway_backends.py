"""The gateway's stored features on each database back end: SQLite and PostgreSQL, same tests."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama, free_port
from tests.support.gateway import GatewayProcess


def test_keys_usage_and_restart(tmp_path: Path, fake_ollama: FakeOllama, database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    with GatewayProcess(tmp_path / "run1", ollama_url=fake_ollama.url, env=env) as gate:
        created = gate.create_key("alice", "laptop")
        key = created["key"]
        member = gate.chat("hi", {"X-API-Key": key})
        assert member.json()["user"] == "alice" and member.json()["tier"] == "member"
        stream = gate.chat("hi", {"Authorization": f"Bearer {key}"}, "/chat/stream")
        assert stream.status_code == 200 and stream.text.count("\n") == 3
        rows = gate.usage_rows(2)
        assert [(r["endpoint"], r["user"], r["key_id"]) for r in rows] == [
            ("/chat/stream", "alice", created["id"]),
            ("/chat", "alice", created["id"]),
        ]

    # Everything survives a restart (a fresh working directory: only the database is shared).
    with GatewayProcess(tmp_path / "run2", ollama_url=fake_ollama.url, env=env) as gate:
        assert gate.chat("x", {"X-API-Key": key}).status_code == 200
        assert len(gate.usage_rows(3)) == 3
        listed = httpx.get(gate.url + "/api/keys", params={"user_id": "alice"}, timeout=10).json()["keys"]
        assert [k["name"] for k in listed] == ["laptop"] and listed[0]["active"] is True
        assert httpx.delete(f"{gate.url}/api/keys/{created['id']}", timeout=10).json() == {
            "id": created["id"],
            "revoked": True,
        }
        refused = gate.chat("x", {"X-API-Key": key})
        assert refused.status_code == 401
        assert gate.status()["usage"]["total_requests"] == 3


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
        member = gate.chat("hi", {"X-API-Key": "oa-" + "A" * 43})
        assert (member.status_code, member.json()) == (503, {"detail": "database unavailable"})
        assert gate.chat("hi").status_code == 200
        assert gate.status()["usage"]["database_online"] is False
        # A clean stop would retry the pending row for 10 s against the dead database; not this test's subject.
        gate.kill()
