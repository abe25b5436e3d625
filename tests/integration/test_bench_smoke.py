"""The benchmark's smoke mode, so `make bench` cannot rot: it runs end to end and its checks hold.

No timing is asserted here (numbers belong to `make bench`); only what must be exact at any speed:
every request answered 200, every stream complete, one usage row per answered request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import installed_tool

REPO = Path(__file__).resolve().parents[2]


def run_smoke(tmp_path: Path, generator: str) -> tuple[dict[str, Any], str]:
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
        env={k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GATE_")},
    )
    try:
        printed, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        printed, _ = process.communicate()
        pytest.fail(f"bench --smoke did not finish within 120 s:\n{printed}")
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


def test_bench_smoke_with_the_python_generator(tmp_path: Path) -> None:
    results, printed = run_smoke(tmp_path, "python")
    assert results["generator"].startswith("python asyncio generator")
    assert_exact(results, printed)


def test_bench_smoke_with_wrk(tmp_path: Path) -> None:
    installed_tool("wrk")
    results, printed = run_smoke(tmp_path, "wrk")
    assert results["generator"].startswith("wrk")
    assert_exact(results, printed)
