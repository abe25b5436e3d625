"""Server-side render time of the console's pages with a million usage rows (SQLite).

    python -m bench.console_render [--rows 1000000] [--days 30] [--repeat 7] [--workdir DIR]

Seeds `--rows` usage rows (the shape of bench.usage_reports: 201 users, 5 models, errors, queue times)
spread evenly over the last `--days` days up to now, into a fresh SQLite file migrated by the gateway's
own migrations. Then builds the real app on it (in process, no network) and times each console page for
a signed-in admin and a member: the whole ASGI request, handler, queries and template, best and median
of `--repeat` runs after one warm-up. Prints a table and writes bench/console_render.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from bench.usage_reports import COLUMNS, SEED_BATCH, seed_rows
from ollama_gate.adapters.sql import migrate
from ollama_gate.adapters.sql.database import Database
from ollama_gate.entrypoints.app import create_app
from ollama_gate.entrypoints.config import Settings, UpstreamSetting
from ollama_gate.entrypoints.container import build_container

ROLLUPS_REVISION_BEFORE = "0004"
ADMIN_TOKEN = "bench-console-admin-token-0123456789"
BASE = "http://console.bench"
ADMIN_PAGES = [
    "/console/overview",
    "/console/usage",
    "/console/usage?group_by=model",
    "/console/usage?model=phi3:mini",
    "/console/usage?cursor=500000",
    "/console/usage?user_id=user007",
    "/console/keys",
    "/console/plans",
    "/console/models",
    "/console/api/series?range=day",
]
MEMBER_PAGES = ["/console/usage", "/console/keys"]


def seed(path: Path, rows: int, days: float) -> None:
    """`rows` rows, evenly spaced over the last `days` days, the newest a second ago."""
    now = datetime.now(UTC)
    step = timedelta(days=days) / rows
    statement = (
        f"INSERT INTO usage_logs ({', '.join(f'{c!r}' for c in COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(COLUMNS))})"
    )
    with sqlite3.connect(path) as connection:
        for offset in range(0, rows, SEED_BATCH):
            batch = seed_rows(min(SEED_BATCH, rows - offset), offset)
            values = []
            for n, row in enumerate(batch, start=offset):
                moment = now - timedelta(seconds=1) - step * (rows - 1 - n)
                values.append((moment.strftime("%Y-%m-%d %H:%M:%S.%f"), *row[1:]))
            connection.executemany(statement, values)


async def sign_in(client: AsyncTestClient[Any], credential: str) -> None:
    answer = await client.post(
        "/console/login", data={"credential": credential}, headers={"Origin": BASE}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text


async def time_pages(
    client: AsyncTestClient[Any], pages: list[str], repeat: int
) -> dict[str, dict[str, float]]:
    results = {}
    for path in pages:
        answer = await client.get(path)  # warm-up: connections, template compilation, caches
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            answer = await client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200
        results[path] = {"best_ms": round(min(times), 2), "median_ms": round(statistics.median(times), 2)}
        print(
            f"  {path:<40} best {min(times):7.2f} ms   median {statistics.median(times):7.2f} ms", flush=True
        )
    return results


async def run(rows: int, days: float, repeat: int, workdir: Path) -> dict[str, Any]:
    path = workdir / "console.db"
    path.unlink(missing_ok=True)
    url = f"sqlite+aiosqlite:///{path}"
    database = Database(url)
    # The rows go in raw, as they would have been written before the rollups existed; the last
    # migration then counts them into the rollups, as it does on an upgrade (timed too).
    async with database.engine.connect() as connection:
        await connection.run_sync(migrate.upgrade, database.sqlite_path, ROLLUPS_REVISION_BEFORE)
    started = time.perf_counter()
    seed(path, rows, days)
    print(f"seeded {rows} rows over {days:g} days in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    await database.upgrade()
    migrated = time.perf_counter() - started
    await database.close()
    print(f"migrated to {migrate.head_revision()} (rollups counted) in {migrated:.1f} s", flush=True)
    settings = Settings(
        database_url=url,
        admin_token=ADMIN_TOKEN,
        upstreams=(UpstreamSetting("http://127.0.0.1:9", "ollama-1"),),
        log_level="warning",
    )
    container = build_container(settings)
    app = create_app(container)
    results: dict[str, Any] = {"rows": rows, "days": days, "repeat": repeat, "rollup_migration_s": migrated}
    # One client (one lifespan): the admin's session, then the member's.
    async with AsyncTestClient(app, base_url=BASE) as client:
        issued = await container.keys().create("user007", "bench")
        await sign_in(client, ADMIN_TOKEN)
        print("admin:", flush=True)
        results["admin"] = await time_pages(client, ADMIN_PAGES, repeat)
        client.cookies.clear()
        await sign_in(client, issued.secret)
        print("member user007:", flush=True)
        results["member"] = await time_pages(client, MEMBER_PAGES, repeat)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("console_render.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="console-render-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run(args.rows, args.days, args.repeat, workdir))
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    slowest = max((t["median_ms"], p) for role in ("admin", "member") for p, t in results[role].items())
    print(f"slowest median: {slowest[1]} {slowest[0]:.2f} ms; written to {args.output}")


if __name__ == "__main__":
    main()
