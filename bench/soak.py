"""`python -m bench --soak [--minutes 10]`: mixed traffic for a long while, the gateway's memory sampled.

One gateway process (SQLite, 16 slots: at the soak's rate about a third of them are busy, so requests
queue now and then without the queue growing) in front of the fast fake upstream (streams of 20 lines
5 ms apart); bench.soak_client sends JSON chat, streams, Ollama's native API, the OpenAI API, anonymous
requests over a small limit (429s) and streams the client leaves (cancellations) at a steady rate.
Every `--sample-seconds` (10) the gateway's RSS is sampled; the slope is a least-squares fit in MB per
minute over the samples after the warm-up (the first fifth of the run, at least one sample). Once the
traffic ends the gateway is stopped (SIGTERM: its usage writer flushes) and its SQLite database read:
every answer except a refusal (429: a limit or the per-identity queue cap; 503: the GPU queue full or
waited out — the upstream never fails here) has exactly one usage row, a cancelled stream included. Its row says `cancelled` when the gateway saw the client leave before the stream's end; a
client slow enough to close after the last line has had a complete answer (`ok`): so cancelled rows are
at most the cancelled streams, and are printed beside them.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench import processes
from bench.processes import REPO

RATE_LIMIT = "1000000/1"
ANONYMOUS_LIMIT = "5/1"
USERS = 20
# A slope beyond this after the warm-up is a leak worth a look: 0.5 MB/min at 150 requests/s is about
# 55 bytes kept per request.
SLOPE_LIMIT_MB_PER_MIN = 0.5


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute; NaN for fewer than two."""
    if len(samples) < 2:
        return float("nan")
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return float("nan")
    return sum((t - mean_t) * (m - mean_m) for t, m in samples) / spread * 60


def rows_by_status_and_outcome(database: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute(
            "SELECT status, outcome, COUNT(*) FROM usage_logs GROUP BY status, outcome"
        ).fetchall()
    return {f"{status} {outcome}": int(count) for status, outcome, count in rows}


def run_soak(minutes: float, sample_seconds: float, rate: float) -> int:
    seconds = minutes * 60
    started_at = dt.datetime.now(dt.UTC)
    print(f"soak: {minutes:g} min of mixed traffic at {rate:g} requests/s, RSS every {sample_seconds:g} s")
    with tempfile.TemporaryDirectory(prefix="ollama-gate-soak-") as temporary:
        workdir = Path(temporary)
        database = workdir / "soak.db"
        keys_file = workdir / "keys.txt"
        with processes.fake_upstream(workdir, 20, 5.0) as upstream:
            gateway = processes.gateway(
                workdir,
                upstream.url,
                database,
                RATE_LIMIT,
                {"OLLAMA_GATE_ANON_RATE_LIMIT": ANONYMOUS_LIMIT, "OLLAMA_GATE_SLOTS": "16"},
            )
            try:
                keys_file.write_text("\n".join(processes.create_member_keys(gateway.url, USERS)) + "\n")
                command = [
                    sys.executable,
                    "-m",
                    "bench.soak_client",
                    "--url",
                    gateway.url,
                    "--keys-file",
                    str(keys_file),
                    "--seconds",
                    str(seconds),
                    "--rate",
                    str(rate),
                ]
                client = subprocess.Popen(
                    command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                begin = time.monotonic()
                samples: list[tuple[float, float]] = [(0.0, processes.rss_mb(gateway.pid))]
                cpu_begin = processes.cpu_seconds(gateway.pid)
                print(f"soak: t=   0 s  rss {samples[0][1]:7.1f} MB", flush=True)
                while client.poll() is None:
                    next_at = begin + len(samples) * sample_seconds
                    while client.poll() is None and time.monotonic() < next_at:
                        time.sleep(min(0.2, max(0.0, next_at - time.monotonic())))
                    if client.poll() is not None:
                        break
                    at = time.monotonic() - begin
                    samples.append((at, processes.rss_mb(gateway.pid)))
                    print(f"soak: t={at:4.0f} s  rss {samples[-1][1]:7.1f} MB", flush=True)
                cpu = processes.cpu_seconds(gateway.pid) - cpu_begin
                out, err = client.communicate()
                if client.returncode != 0:
                    raise RuntimeError(f"soak client failed ({client.returncode}):\n{err}")
            finally:
                gateway.stop()
            log = gateway.log()
        rows = rows_by_status_and_outcome(database)
    traffic = msgspec.json.decode(out.strip().splitlines()[-1])
    answers: dict[str, int] = traffic["answers"]
    errors: dict[str, int] = traffic["errors"]
    refused = sum(count for name, count in answers.items() if name.endswith((" 429", " 503")))
    cancelled = sum(count for name, count in answers.items() if name.endswith(" cancelled"))
    answered = sum(answers.values())
    expected_rows = answered - refused
    rows_total = sum(rows.values())
    cancelled_rows = sum(count for name, count in rows.items() if name.endswith(" cancelled"))
    warm_up = max(seconds / 5, sample_seconds)
    settled = [(t, m) for t, m in samples if t >= warm_up]
    slope = slope_mb_per_min(settled)
    growth = settled[-1][1] - settled[0][1] if len(settled) >= 2 else float("nan")
    accounting_ok = rows_total == expected_rows and cancelled_rows <= cancelled and not errors
    print()
    print(f"ollama-gate soak, {started_at:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    print(
        f"traffic: {traffic['sent']:,} requests in {traffic['seconds']:.0f} s "
        f"({traffic['sent'] / max(traffic['seconds'], 1e-9):.0f}/s); gateway CPU {cpu:.1f} s "
        f"({cpu / max(traffic['seconds'], 1e-9) * 100:.0f}% of a core)"
    )
    print("answers by kind and status: " + ", ".join(f"{k}: {v:,}" for k, v in answers.items()))
    if errors:
        print("transport errors: " + ", ".join(f"{k}: {v:,}" for k, v in errors.items()))
    print(f"RSS samples (MB): {' '.join(f'{m:.1f}' for _, m in samples)}")
    print(
        f"RSS after the warm-up ({warm_up:.0f} s): slope {slope:+.3f} MB/min over {len(settled)} samples "
        f"(limit {SLOPE_LIMIT_MB_PER_MIN} MB/min), {growth:+.1f} MB from first to last"
    )
    print("usage rows by status and outcome: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(rows.items())))
    print(
        f"usage rows {rows_total:,} vs answers other than refusals {expected_rows:,} "
        f"({answered:,} answers, {refused:,} refused with 429 or 503): "
        f"{'EQUAL' if accounting_ok else 'MISMATCH'}; "
        f"rows with outcome cancelled {cancelled_rows:,} of {cancelled:,} streams the client left"
    )
    flat = slope == slope and abs(slope) <= SLOPE_LIMIT_MB_PER_MIN
    print(f"memory after the warm-up: {'FLAT' if flat else 'GROWING (or too few samples)'}")
    document = {
        "started_at": started_at.isoformat(),
        "minutes": minutes,
        "rate": rate,
        "samples": samples,
        "slope_mb_per_min": slope,
        "growth_mb": growth,
        "answers": answers,
        "errors": errors,
        "usage_rows": rows,
        "expected_rows": expected_rows,
        "cancelled": cancelled,
        "cancelled_rows": cancelled_rows,
        "accounting_equal": accounting_ok,
        "gateway_cpu_s": cpu,
    }
    print("SOAK_JSON " + msgspec.json.encode(document).decode())
    if "Traceback" in log:
        print("gateway log has errors:\n" + log[-4000:])
    return 0 if accounting_ok else 1
