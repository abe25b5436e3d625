"""Usage reports on the real gateway (SQLite): the summary per group, the filters and the cursor of
/api/usage, the CSV export, who may read what, and bad parameters answered 400."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, insert

from ollama_gate.adapters.sql.tables import usage_logs
from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

gate = gateway_per_module(HIGH_LIMITS)

AWKWARD_MODEL = 'we"ird, model\nname'
STRANGER = {"X-Forwarded-For": "203.0.113.9"}  # relayed: not the loopback admin, and no key


def get(
    gate: GatewayProcess, path: str, headers: dict[str, str] | None = None, /, **params: Any
) -> httpx.Response:
    return httpx.get(gate.url + path, params=params, headers=headers or {}, timeout=30)


def generate(gate: GatewayProcess, key: str, model: str, prompt: str = "hello there") -> int:
    body = {"model": model, "prompt": prompt, "stream": False}
    response = httpx.post(gate.url + "/api/generate", json=body, headers={"X-API-Key": key}, timeout=10)
    return response.status_code


def walk_away_from_a_stream(gate: GatewayProcess, key: str) -> None:
    """A stream the client leaves after its first chunks: a `cancelled` row."""
    body = {"message": "!long"}
    with httpx.stream("POST", gate.url + "/chat/stream", json=body, headers={"X-API-Key": key}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(lines)


def rows_of(gate: GatewayProcess, user: str, expected: int) -> list[dict[str, Any]]:
    rows = gate.usage_rows(expected, user)
    assert len(rows) == expected, rows
    return rows


def export_rows(response: httpx.Response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.text, newline="")))


@pytest.fixture(scope="module")
def traffic(gate: GatewayProcess) -> dict[str, Any]:
    """Two members' requests of every kind: ok, upstream errors (502 and 404), a cancelled stream, two
    models. Returns their keys and stored rows."""
    keys = {user: gate.create_key(user)["key"] for user in ("report-a", "report-b")}
    a, b = keys["report-a"], keys["report-b"]
    for index in range(4):
        assert gate.chat(f"question {index} " * (index + 1), {"X-API-Key": a}).status_code == 200
    assert generate(gate, a, "llama3.2:1b") == 200
    assert gate.chat("!error500", {"X-API-Key": a}).status_code == 502
    assert generate(gate, a, AWKWARD_MODEL) == 404  # Ollama does not know it: still a row, with the name
    walk_away_from_a_stream(gate, a)
    for index in range(3):
        assert gate.chat(f"b {index}", {"X-API-Key": b}).status_code == 200
    rows = {"report-a": rows_of(gate, "report-a", 8), "report-b": rows_of(gate, "report-b", 3)}
    return {"keys": keys, "rows": rows}


def group_key(row: dict[str, Any], group_by: str) -> str | None:
    if group_by in ("user", "model", "plan"):
        value: str | None = row[group_by]
        return value
    moment = datetime.fromisoformat(row["timestamp"]).astimezone(UTC)
    return moment.strftime("%Y-%m-%d") if group_by == "day" else moment.strftime("%Y-%m-%dT%H:00Z")


def expected_groups(rows: list[dict[str, Any]], group_by: str) -> dict[str | None, dict[str, Any]]:
    """The summary as a reader would compute it from the rows /api/usage lists."""
    grouped: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[group_key(row, group_by)].append(row)
    return {
        key: {
            "requests": len(members),
            "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in members),
            "completion_tokens": sum(r["completion_tokens"] or 0 for r in members),
            "errors": sum(r["outcome"] == "upstream_error" for r in members),
            "cancelled": sum(r["outcome"] == "cancelled" for r in members),
            "latencies": sorted(r["latency_ms"] for r in members),
        }
        for key, members in grouped.items()
    }


def inclusive_percentile(values: list[float], fraction: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


# -- the summary ------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["user", "model", "plan", "day", "hour"])
def test_the_summary_per_group_adds_up_the_rows(
    gate: GatewayProcess, traffic: dict[str, Any], group_by: str
) -> None:
    rows = traffic["rows"]["report-a"]

    response = get(gate, "/api/usage/summary", group_by=group_by, user_id="report-a")

    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["group_by"] == group_by
    expected = expected_groups(rows, group_by)
    found = {group[group_by]: group for group in summary["groups"]}
    assert set(found) == set(expected)
    for key, group in found.items():
        want = expected[key]
        assert set(group) == {
            group_by,
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "errors",
            "cancelled",
            "p50_latency_ms",
            "p95_latency_ms",
            "mean_queue_ms",
        }
        for name in ("requests", "prompt_tokens", "completion_tokens", "errors", "cancelled"):
            assert group[name] == want[name], (key, name)
        latencies = want["latencies"]
        assert group["p50_latency_ms"] == pytest.approx(inclusive_percentile(latencies, 0.5), abs=0.002)
        assert group["p95_latency_ms"] == pytest.approx(inclusive_percentile(latencies, 0.95), abs=0.002)
        assert (
            latencies[0] - 0.001
            <= group["p50_latency_ms"]
            <= group["p95_latency_ms"]
            <= latencies[-1] + 0.001
        )
        # The gateway's queue is on by default: every admitted request that reached Ollama waited (0 or more).
        assert group["mean_queue_ms"] is None or group["mean_queue_ms"] >= 0


def test_the_default_summary_is_per_user_busiest_first(gate: GatewayProcess, traffic: dict[str, Any]) -> None:
    summary = get(gate, "/api/usage/summary").json()

    assert summary["group_by"] == "user"
    users = [group["user"] for group in summary["groups"]]
    assert users.index("report-a") < users.index("report-b")  # 8 requests before 3
    (a,) = [group for group in summary["groups"] if group["user"] == "report-a"]
    assert (a["requests"], a["errors"], a["cancelled"]) == (8, 2, 1)


def test_a_summary_over_a_time_range_counts_only_its_rows(
    gate: GatewayProcess, traffic: dict[str, Any]
) -> None:
    rows = sorted(traffic["rows"]["report-a"], key=lambda row: row["id"])
    middle = rows[3]["timestamp"]

    def moment(text: str) -> datetime:
        return datetime.fromisoformat(text)

    before = get(gate, "/api/usage/summary", user_id="report-a", until=middle).json()["groups"]
    after = get(gate, "/api/usage/summary", user_id="report-a", since=middle).json()["groups"]
    nothing = get(gate, "/api/usage/summary", user_id="report-a", since="2000-01-01", until="2000-01-02")

    expected_before = sum(moment(row["timestamp"]) < moment(middle) for row in rows)
    assert [g["requests"] for g in before] == [expected_before]
    assert [g["requests"] for g in after] == [len(rows) - expected_before]
    assert nothing.json() == {"group_by": "user", "groups": []}


def test_a_member_summarizes_and_exports_only_its_own_rows(
    gate: GatewayProcess, traffic: dict[str, Any]
) -> None:
    member = {"X-API-Key": traffic["keys"]["report-b"]}

    summary = get(gate, "/api/usage/summary", member, group_by="user")
    exported = get(gate, "/api/usage/export", member)
    theirs = [
        get(gate, path, member, user_id="report-a") for path in ("/api/usage/summary", "/api/usage/export")
    ]

    assert [(g["user"], g["requests"]) for g in summary.json()["groups"]] == [("report-b", 3)]
    assert {row["user"] for row in export_rows(exported)} == {"report-b"}
    assert len(export_rows(exported)) == 3
    assert [response.status_code for response in theirs] == [403, 403]


@pytest.mark.parametrize("path", ["/api/usage/summary", "/api/usage/export"])
def test_a_stranger_reads_no_reports(gate: GatewayProcess, path: str) -> None:
    response = get(gate, path, STRANGER)

    assert response.status_code == 403
    assert "OLLAMA_GATE_ADMIN_TOKEN" in response.json()["detail"]


BAD_PARAMETERS = [
    ("/api/usage/summary", {"group_by": "week"}),
    ("/api/usage/summary", {"since": "last tuesday"}),
    ("/api/usage/summary", {"until": "2026-02-30"}),
    ("/api/usage/summary", {"since": "2026-11-26", "until": "2026-11-25"}),
    ("/api/usage/summary", {"status": str(2**64)}),
    ("/api/usage/summary", {"user_id": "not valid"}),
    ("/api/usage/export", {"since": "soon"}),
    ("/api/usage/export", {"outcome": "exploded"}),
    ("/api/usage/export", {"user_id": "x" * 200}),
    ("/api/usage", {"cursor": str(2**63)}),
    ("/api/usage", {"cursor": str(2**64 + 1)}),
    ("/api/usage", {"cursor": "-5"}),
    ("/api/usage", {"cursor": "abc"}),
    ("/api/usage", {"status": "99"}),
    ("/api/usage", {"status": "two hundred"}),
    ("/api/usage", {"model": "m" * 300}),
    ("/api/usage", {"until": "9999-12-31T23:59:59-05:00"}),  # past year 9999 in UTC
    ("/api/usage", {"limit": "9" * 40}),
]


@pytest.mark.parametrize(
    ("path", "params"), BAD_PARAMETERS, ids=[f"{p}-{next(iter(q))}" for p, q in BAD_PARAMETERS]
)
def test_bad_report_parameters_are_400_with_a_reason(
    gate: GatewayProcess, path: str, params: dict[str, str]
) -> None:
    response = get(gate, path, **params)

    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert next(iter(params)) in detail or "since" in detail, detail


# -- /api/usage: filters and the cursor ---------------------------------------------------------------


def test_usage_filters_by_model_status_outcome_and_time(
    gate: GatewayProcess, traffic: dict[str, Any]
) -> None:
    rows = traffic["rows"]["report-a"]
    ids = {row["id"] for row in rows}

    def listed(**params: str) -> list[dict[str, Any]]:
        response = get(gate, "/api/usage", user_id="report-a", limit=1000, **params)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["logs"]
        assert {row["id"] for row in found} <= ids
        return found

    assert [row["model"] for row in listed(model="llama3.2:1b")] == ["llama3.2:1b"]
    assert [row["model"] for row in listed(model=AWKWARD_MODEL)] == [AWKWARD_MODEL]
    assert [row["status"] for row in listed(status="502")] == [502]
    assert {row["outcome"] for row in listed(outcome="upstream_error")} == {"upstream_error"}
    assert len(listed(outcome="upstream_error")) == 2  # the 502 and Ollama's 404
    assert [row["outcome"] for row in listed(outcome="cancelled")] == ["cancelled"]
    newest = max(rows, key=lambda row: row["id"])
    assert [row["id"] for row in listed(since=newest["timestamp"])] == [newest["id"]]
    assert newest["id"] not in {row["id"] for row in listed(until=newest["timestamp"])}


def test_the_cursor_pages_through_every_row_once(gate: GatewayProcess, traffic: dict[str, Any]) -> None:
    everything = get(gate, "/api/usage", user_id="report-a", limit=1000).json()
    pages, seen, cursor = 0, [], None
    while True:
        params = {"user_id": "report-a", "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = get(gate, "/api/usage", **params).json()
        pages += 1
        assert page["count"] == len(page["logs"])
        seen += page["logs"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)

    assert everything["next_cursor"] is None
    assert seen == everything["logs"] and len(seen) == 8
    assert pages == 3  # 3 + 3 + 2


# -- the export ------------------------------------------------------------------------------------


def test_the_export_is_csv_with_the_rows_fields_and_quotes_awkward_values(
    gate: GatewayProcess, traffic: dict[str, Any]
) -> None:
    listed = get(gate, "/api/usage", user_id="report-a", limit=1000).json()

    response = get(gate, "/api/usage/export", user_id="report-a")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["content-disposition"]
    header = response.text.split("\r\n", 1)[0]
    assert header.split(",") == list(listed["logs"][0])  # exactly the JSON rows' fields, in order
    exported = export_rows(response)
    assert len(exported) == listed["count"] == 8
    by_id = {int(row["id"]): row for row in exported}
    assert [int(row["id"]) for row in exported] == sorted(by_id)  # oldest first
    for row in listed["logs"]:
        text = by_id[row["id"]]
        for name, value in row.items():
            assert text[name] == ("" if value is None else str(value)), (name, value)
    assert '"we""ird, model\nname"' in response.text  # quoted, its quote doubled, its line break kept


def test_the_export_of_everyone_has_as_many_rows_as_the_usage_count(
    gate: GatewayProcess, traffic: dict[str, Any]
) -> None:
    listed = get(gate, "/api/usage", limit=1000).json()
    assert listed["next_cursor"] is None  # fewer than a page in this module

    exported = export_rows(get(gate, "/api/usage/export"))

    assert len(exported) == listed["count"]


# -- a large export: streamed ------------------------------------------------------------------------

LARGE = 20_000


@pytest.fixture
def large(tmp_path: Path, fake_ollama: FakeOllama) -> Iterator[GatewayProcess]:
    """A gateway whose database holds LARGE rows of one user (written straight into its SQLite file)."""
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=HIGH_LIMITS) as gateway:
        assert get(gateway, "/api/usage").status_code == 200  # migrated
        engine = create_engine(f"sqlite:///{tmp_path}/data/ollama-gate.db")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        rows = [
            {
                "timestamp": start + timedelta(seconds=n),
                "user": "bulk",
                "tier": "member",
                "key_id": 1,
                "client_ip": "10.1.2.3",
                "endpoint": "/api/chat",
                "model": "smollm:latest",
                "status": 200,
                "outcome": "ok",
                "latency_ms": float(n % 997),
                "prompt_tokens": n % 50,
                "completion_tokens": n % 300,
                "plan": "member",
                "queue_ms": None,
                "request_id": f"bulk-{n}",
            }
            for n in range(LARGE)
        ]
        with engine.begin() as connection:
            connection.execute(insert(usage_logs), rows)
        engine.dispose()
        yield gateway


def test_a_large_export_is_streamed_and_complete(large: GatewayProcess) -> None:
    with httpx.stream("GET", large.url + "/api/usage/export", timeout=60) as response:
        assert response.status_code == 200
        # Streamed: no length known in advance, sent in chunks as the rows are read.
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        lines = sum(1 for _ in response.iter_lines())

    assert lines == LARGE + 1  # the header, then every row
    # As many as the pages of /api/usage hold, walked with the cursor.
    listed, cursor = 0, None
    while True:
        page = get(large, "/api/usage", limit=1000, **({"cursor": cursor} if cursor else {})).json()
        listed += page["count"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert listed == LARGE


def test_a_client_leaving_an_export_early_leaves_the_gateway_serving(large: GatewayProcess) -> None:
    for _ in range(20):  # more than the database pool holds, if a left export kept its connection
        with httpx.stream("GET", large.url + "/api/usage/export", timeout=30) as response:
            first = next(response.iter_lines())
            assert first.startswith("id,timestamp,user")

    summary = get(large, "/api/usage/summary", group_by="model")
    assert summary.status_code == 200
    assert summary.json()["groups"][0]["requests"] == LARGE


def test_reports_are_503_when_the_database_is_down(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    """The export reads its first rows before answering: a dead database is a 503, not a cut-off 200."""
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file, so no database can live under it")
    env = HIGH_LIMITS | {"DATABASE_URL": f"sqlite+aiosqlite:///{blocker}/x.db"}
    with GatewayProcess(tmp_path / "run", ollama_url=fake_ollama.url, env=env) as down:
        answers = [get(down, path) for path in ("/api/usage", "/api/usage/summary", "/api/usage/export")]
        down.kill()

    for response in answers:
        assert (response.status_code, response.json()) == (503, {"detail": "database unavailable"})
