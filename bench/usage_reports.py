"""Usage reports on a million rows: the summary per group_by, and the memory of a CSV export.

    python -m bench.usage_reports --backend sqlite   [--rows 1000000] [--workdir DIR]
    python -m bench.usage_reports --backend postgres --postgres-url postgresql+asyncpg://postgres@host/db

Seeds `--rows` usage rows (201 users, 5 models, 3 plans, a year of timestamps, 5 % upstream errors and
5 % cancelled, half of them with a queue time) into a fresh SQLite file or a scratch PostgreSQL database
(created beside the one `--postgres-url` names, dropped at the end), migrated by the gateway's own
migrations. Then:

1. times SqlUsageStore.summary (the code the endpoint runs) per group_by over all rows, over one day, and
   for one member, the best of `--repeat` runs;
2. starts the real gateway on that database and streams GET /api/usage/export of every row, sampling the
   gateway's RSS every 10 ms: its RSS before, its peak during, and the kernel's high-water mark.

Prints a table and writes the numbers as JSON (`--output`, default bench/usage_reports.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.processes import HOST, REPO, Child, RssSampler, _python_env, free_port, peak_rss_mb, rss_mb
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.stores import SqlUsageStore
from ollama_gate.adapters.sql.tables import usage_logs
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.usage_query import GroupBy, UsageFilter

# The columns a row is written with (the table's own, but its id): the migrations' schema decides.
COLUMNS = tuple(column.name for column in usage_logs.columns if column.name != "id")
START = datetime(2026, 1, 1, tzinfo=UTC)
USERS = [f"user{n:03d}" for n in range(200)] + ["anonymous"]
MODELS = ["smollm:latest", "llama3.2:1b", "qwen2.5:7b", "mistral:7b", "phi3:mini"]
ENDPOINTS = ["/chat", "/chat/stream", "/api/chat", "/api/generate", "/v1/chat/completions"]
SEED_BATCH = 50_000


def seed_rows(count: int, offset: int) -> list[tuple[Any, ...]]:
    """Rows `offset` .. `offset + count`, one every 30 s from START (a million span about a year)."""
    rng = random.Random(offset)
    rows = []
    for n in range(offset, offset + count):
        user = rng.choice(USERS)
        roll = rng.random()
        outcome, status = (
            ("upstream_error", 502) if roll < 0.05 else ("cancelled", 499) if roll < 0.1 else ("ok", 200)
        )
        rows.append(
            (
                START + timedelta(seconds=30 * n, microseconds=rng.randrange(1_000_000)),
                user,
                "anonymous" if user == "anonymous" else "member",
                None if user == "anonymous" else USERS.index(user) + 1,
                f"10.0.{n % 250}.{n % 7}",
                rng.choice(ENDPOINTS),
                rng.choice(MODELS),
                status,
                outcome,
                round(rng.expovariate(1 / 800), 3),
                rng.randrange(5, 200),
                rng.randrange(1, 2000),
                "anonymous" if user == "anonymous" else rng.choice(["member", "member", "gold"]),
                round(rng.expovariate(1 / 40), 3) if rng.random() < 0.5 else None,
                f"bench-{n}",
            )
        )
    return rows


def seed_sqlite(path: Path, rows: int) -> None:
    # SQLAlchemy's SQLite DATETIME storage: 'YYYY-MM-DD HH:MM:SS.ffffff', UTC.
    statement = f"INSERT INTO usage_logs ({', '.join(f'{c!r}' for c in COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    with sqlite3.connect(path) as connection:
        for offset in range(0, rows, SEED_BATCH):
            batch = seed_rows(min(SEED_BATCH, rows - offset), offset)
            connection.executemany(
                statement, [(r[0].strftime("%Y-%m-%d %H:%M:%S.%f"), *r[1:]) for r in batch]
            )
        # No ANALYZE: a gateway's own database never has planner statistics, so neither has this one.


async def seed_postgres(url: str, rows: int) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        for offset in range(0, rows, SEED_BATCH):
            batch = seed_rows(min(SEED_BATCH, rows - offset), offset)
            await connection.copy_records_to_table("usage_logs", records=batch, columns=list(COLUMNS))
        await connection.execute("ANALYZE usage_logs")  # what autovacuum does on a live server
    finally:
        await connection.close()


async def best_of(repeat: int, run: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return min(times)


async def time_summaries(url: str, repeat: int) -> dict[str, dict[str, float]]:
    database = Database(url)
    store = SqlUsageStore(database)
    day = UsageFilter(since=START + timedelta(days=100), until=START + timedelta(days=101))
    member = UsageScope("user007", Tier.MEMBER)
    timings: dict[str, dict[str, float]] = {}
    try:
        for group_by in GroupBy:

            def summary(scope: UsageScope | None, filters: UsageFilter, g: GroupBy = group_by) -> Any:
                return lambda: store.summary(scope, filters, g)

            timings[group_by.value] = {
                "all rows": await best_of(repeat, summary(None, UsageFilter())),
                "one day": await best_of(repeat, summary(None, day)),
                "one member": await best_of(repeat, summary(member, UsageFilter())),
            }
            print(f"  summary group_by={group_by.value}: {timings[group_by.value]}", flush=True)
        timings["/api/usage page"] = {
            "newest 1000": await best_of(repeat, lambda: store.recent(1001, None)),
            "model filter": await best_of(
                repeat, lambda: store.recent(1001, None, UsageFilter(model="phi3:mini"))
            ),
            "one member, deep cursor": await best_of(
                repeat, lambda: store.recent(1001, member, UsageFilter(before_id=200_000))
            ),
        }
    finally:
        await database.close()
    return timings


def export_through_gateway(url: str, workdir: Path) -> dict[str, float]:
    """GET /api/usage/export of every row from a real gateway on `url`; its memory while it streams."""
    port = free_port()
    env = _python_env(
        {
            "OLLAMA_GATE_HOST": HOST,
            "OLLAMA_GATE_PORT": str(port),
            "OLLAMA_GATE_OLLAMA_URL": "http://127.0.0.1:9",
            "OLLAMA_GATE_DATABASE_URL": url,
            "OLLAMA_GATE_LOG_LEVEL": "warning",
        }
    )
    gateway = Child(
        "gateway", [sys.executable, "-m", "ollama_gate", "serve"], workdir, env, workdir / "gateway.log"
    )
    gateway.start(port)
    try:
        urllib.request.urlopen(
            gateway.url + "/api/usage?limit=1", timeout=30
        ).read()  # warm: migrated, connected
        before = rss_mb(gateway.pid)
        received, lines = 0, 0
        started = time.perf_counter()
        with (
            RssSampler(gateway.pid, interval=0.01) as sampler,
            urllib.request.urlopen(gateway.url + "/api/usage/export", timeout=600) as response,
        ):
            first_byte = time.perf_counter() - started
            while chunk := response.read(1 << 16):
                received += len(chunk)
                lines += chunk.count(b"\n")  # no value of the seeded rows holds a line break
        seconds = time.perf_counter() - started
        return {
            "rows": lines - 1,
            "megabytes": round(received / 2**20, 1),
            "seconds": round(seconds, 2),
            "first_byte_seconds": round(first_byte, 3),
            "rss_before_mb": round(before, 1),
            "rss_peak_mb": round(sampler.peak_mb, 1),
            "rss_after_mb": round(rss_mb(gateway.pid), 1),
            "vm_hwm_mb": round(peak_rss_mb(gateway.pid) or 0.0, 1),
        }
    finally:
        gateway.stop()


def sqlite_database(workdir: Path, rows: int) -> str:
    path = workdir / "usage.db"
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(migrate(url))
    started = time.perf_counter()
    seed_sqlite(path, rows)
    print(f"seeded {rows} rows into {path} in {time.perf_counter() - started:.1f} s", flush=True)
    return url


async def migrate(url: str) -> None:
    database = Database(url)
    try:
        await database.upgrade()
    finally:
        await database.close()


async def admin_execute(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_reports", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--postgres-url", help="any database on the server: the scratch one is made beside it"
    )
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "usage_reports.json")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="usage-reports-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scratch: str | None = None
    if args.backend == "sqlite":
        url = sqlite_database(workdir, args.rows)
    else:
        if not args.postgres_url:
            parser.error("--postgres-url is required with --backend postgres")
        scratch = f"og_usage_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(admin_execute(args.postgres_url, f'CREATE DATABASE "{scratch}"'))
        url = args.postgres_url.rsplit("/", 1)[0] + "/" + scratch
        asyncio.run(migrate(url))
        started = time.perf_counter()
        asyncio.run(seed_postgres(url, args.rows))
        print(f"seeded {args.rows} rows into {scratch} in {time.perf_counter() - started:.1f} s", flush=True)
    try:
        summaries = asyncio.run(time_summaries(url, args.repeat))
        export = export_through_gateway(url, workdir)
    finally:
        if scratch is not None:
            asyncio.run(admin_execute(args.postgres_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))

    results = {"backend": args.backend, "rows": args.rows, "summary_seconds": summaries, "export": export}
    print(json.dumps(results, indent=2))
    existing: dict[str, Any] = json.loads(args.output.read_text()) if args.output.exists() else {}
    existing[args.backend] = results
    args.output.write_text(json.dumps(existing, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
