"""The benchmark's smoke mode, so `make bench` cannot rot: it runs end to end and its checks hold.

No timing is asserted here (numbers belong to `make bench`); only what must be exact at any speed:
every request answered 200, every stream complete, one usage row per answered request; and that the
scheduler's sections (queue off, Redis + PostgreSQL, fairness, waiting) ran and gave sane values.

The Redis + PostgreSQL section uses the test services when they are configured (a scratch database beside
the test one, made and dropped here, and the test Redis database, which the bench flushes); without them
the bench uses its own defaults and skips the section if they are unreachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.support.services import installed_tool

REPO = Path(__file__).resolve().parents[2]


REQUIRE_SERVICES = os.environ.get("OLLAMA_GATE_TEST_REQUIRE_SERVICES") == "1"


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def bench_services() -> Iterator[dict[str, str]]:
    """OLLAMA_GATE_BENCH_* for the bench: the test Redis, and a scratch database beside the test one."""
    env: dict[str, str] = {}
    redis_url = os.environ.get("OLLAMA_GATE_TEST_REDIS_URL")
    if redis_url:
        env["OLLAMA_GATE_BENCH_REDIS_URL"] = redis_url
    postgres_url = os.environ.get("OLLAMA_GATE_TEST_POSTGRES_URL")
    scratch = None
    if postgres_url:
        url = make_url(postgres_url)
        scratch = f"{url.database}_bench_smoke"
        asyncio.run(_admin(postgres_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
        asyncio.run(_admin(postgres_url, f'CREATE DATABASE "{scratch}"'))
        env["OLLAMA_GATE_BENCH_POSTGRES_URL"] = url.set(database=scratch).render_as_string(False)
    yield env
    if postgres_url and scratch:
        asyncio.run(_admin(postgres_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))


def run_smoke(tmp_path: Path, generator: str, services: dict[str, str]) -> tuple[dict[str, Any], str]:
    output = tmp_path / "results.json"
    command = [sys.executable, "-m", "bench", "--smoke", "--generator", generator, "--output", str(output)]
    # A session of its own, so a hung run can be stopped with every process it started.
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GATE_")}, **services},
    )
    try:
        printed, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        printed, _ = process.communicate()
        pytest.fail(f"bench --smoke did not finish within 300 s:\n{printed}")
    assert process.returncode == 0, printed
    return json.loads(output.read_text()), printed


def assert_exact(results: dict[str, Any], printed: str) -> None:
    profile = results["profile"]
    accounting = results["accounting"]
    assert accounting["sent"] > 0
    assert accounting["answered_200"] == accounting["sent"], printed
    assert accounting["usage_rows_by_status"] == {"200": accounting["sent"]}, printed
    assert len(results["runs"]) == profile["runs"] == 2
    for run in results["runs"]:
        assert run["streams_complete"] == profile["streams"], printed
        assert run["streams_failed"] == 0 and run["direct_streams_failed"] == 0, printed
        assert run["json_non_200"] == 0 and run["single_non_200"] == 0, printed
        assert run["peak_rss_mb"] > 0
        # The bare forwarder, the calibration reference, took the same load and answered all of it.
        assert run["bare_json_non_200"] == 0 and run["bare_single_non_200"] == 0, printed
        assert run["bare_streams_complete"] == profile["streams"], printed
        assert run["bare_streams_failed"] == 0, printed
        assert run["bare_rps"] > 0 and run["machine_speed"] > 0
    checks = [r for r in results["results"] if r["kind"] == "check"]
    assert checks and all(r["passed"] for r in checks), printed
    # Smoke mode holds nothing to a performance target, absolute or scaled to the machine.
    assert all(r["passed"] is None for r in results["results"] if r["kind"] in ("target", "calibrated"))
    assert {r["key"] for r in results["results"] if r["scenario"] == "6 calibration"} >= {
        "machine_speed",
        "scaled_rps_target",
        "scaled_added_p50_target_ms",
    }
    assert "usage rows with status 200 == answers 200" in printed
    assert_scheduler_sections(results, printed)


def assert_scheduler_sections(results: dict[str, Any], printed: str) -> None:
    """Sections 7-10 ran in every run (10 once) and their numbers are what such numbers can be."""
    profile = results["profile"]
    runs = results["runs"]
    for run in runs:
        # 7: the gateway with the queue off took the same loads and answered all of them.
        assert run["queue_on_rps"] > 0 and run["queue_off_rps"] > 0 and run["queue_on_over_off_rps"] > 0, (
            printed
        )
        assert run["queue_pair_non_200"] == 0 and run["queue_pair_single_non_200"] == 0, printed
        # 9: every request answered by both; the FIFO upstream makes the light users wait behind the
        # flood, the gateway's queue lets them in next (a difference of structure, not of speed).
        for target in ("direct", "gateway"):
            assert run[f"fair_{target}_non_200"] == 0, printed
            assert 0 < run[f"fair_{target}_utilisation_pct"] <= 100.5, printed
            assert 0 < run[f"fair_{target}_jain"] <= 1.0 + 1e-9, printed
            assert run[f"fair_{target}_light_wait_p50_ms"] >= 0, printed
        assert run["fair_gateway_light_wait_p50_ms"] < run["fair_direct_light_wait_p50_ms"], printed
        assert run["fair_gateway_jain"] > run["fair_direct_jain"], printed
    # 8: Redis + PostgreSQL in one process and with two workers, unless their services are missing.
    if results["scale_out_skipped"] is None:
        for run in runs:
            assert run["scaled_rps"] > 0 and run["workers_rps"] > 0, printed
            assert run["scaled_non_200"] == 0, printed
    else:
        assert not REQUIRE_SERVICES, results["scale_out_skipped"]
    # 10: every waiting request was held in the queue, then answered 200 once the slots freed.
    first = runs[0]
    assert first["waiting_not_200"] == 0, printed
    assert first["waiting_answered_200"] == profile["waiting"], printed
    assert first["waiting_queued"] >= profile["waiting"] - profile["waiting_slots"], printed
    assert first["waiting_rss_mb"] > 0 and first["waiting_cpu_s"] >= 0, printed
    assert first["waiting_drain_s"] > 0, printed
    assert "9 fairness" in printed and "10 300 waiting" in printed


def test_bench_smoke_with_the_python_generator(tmp_path: Path, bench_services: dict[str, str]) -> None:
    results, printed = run_smoke(tmp_path, "python", bench_services)
    assert results["generator"].startswith("python asyncio generator")
    assert_exact(results, printed)


def test_bench_smoke_with_wrk(tmp_path: Path, bench_services: dict[str, str]) -> None:
    installed_tool("wrk")
    results, printed = run_smoke(tmp_path, "wrk", bench_services)
    assert results["generator"].startswith("wrk")
    assert_exact(results, printed)


def test_soak_runs_for_a_few_seconds_and_every_answer_has_its_row() -> None:
    """`python -m bench --soak` end to end, briefly: samples printed, one usage row per answer but 429s."""
    command = [sys.executable, "-m", "bench", "--soak", "--minutes", "0.1", "--sample-seconds", "1"]
    completed = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GATE_")},
    )
    printed = completed.stdout + completed.stderr
    assert completed.returncode == 0, printed
    line = next(ln for ln in completed.stdout.splitlines() if ln.startswith("SOAK_JSON "))
    soak = json.loads(line[len("SOAK_JSON ") :])
    assert soak["accounting_equal"] and not soak["errors"], printed
    assert sum(soak["usage_rows"].values()) == soak["expected_rows"] > 0, printed
    answers = soak["answers"]
    # Every kind of the mix was sent and answered; the anonymous limit refused some.
    for kind in ("chat 200", "stream 200", "generate 200", "native_chat 200", "openai 200", "anonymous 429"):
        assert answers.get(kind, 0) > 0, printed
    assert answers.get("cancel cancelled", 0) > 0 and soak["cancelled_rows"] <= soak["cancelled"], printed
    assert len(soak["samples"]) >= 4 and all(mb > 0 for _, mb in soak["samples"]), printed
    assert "slope" in printed and "usage rows" in printed
