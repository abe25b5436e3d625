"""The processes under test (the fake upstream, the bare forwarder, the gateway) and the bench's admin calls."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class Child:
    """A child process with its output in a log file; stopped with SIGTERM (SIGKILL if it lingers)."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = 0
        self._command = command
        self._cwd = cwd
        self._env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._command, cwd=self._cwd, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            if _accepting(port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _python_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GATE_")}
    env.update(extra)
    return env


def _bench_module(
    name: str,
    module: str,
    workdir: Path,
    arguments: list[str],
    log_name: str | None = None,
    wrapper: Sequence[str] = (),
) -> Child:
    """A started `python -m bench.<module> --port P ...` process (run by `wrapper`, if any), its output in
    `workdir`."""
    port = free_port()
    child = Child(
        name,
        [*wrapper, sys.executable, "-m", f"bench.{module}", "--port", str(port), *arguments],
        REPO,
        _python_env({}),
        workdir / f"{log_name or module.replace('_', '-')}.log",
    )
    child.start(port, timeout=_start_timeout(wrapper, 30.0))
    return child


def _start_timeout(wrapper: Sequence[str], usual: float) -> float:
    # Under a wrapper such as valgrind a process starts tens of times slower.
    return usual * 20 if wrapper else usual


def fake_upstream(
    workdir: Path,
    chunks: int,
    delay_ms: float,
    slots: int = 0,
    service_ms: float = 0.0,
    held: bool = False,
    name: str = "fake upstream",
) -> Child:
    """The fake Ollama; with `slots` it queues like Ollama (see bench.fake_upstream)."""
    arguments = ["--chunks", str(chunks), "--delay-ms", str(delay_ms)]
    if slots:
        arguments += ["--slots", str(slots), "--service-ms", str(service_ms)]
    if held:
        arguments.append("--held")
    log_name = name.replace(" ", "-")
    return _bench_module(name, "fake_upstream", workdir, arguments, log_name)


def bare_forwarder(workdir: Path, upstream_url: str, wrapper: Sequence[str] = ()) -> Child:
    """The reference the targets are scaled by: see bench.bare_forwarder."""
    return _bench_module(
        "bare forwarder", "bare_forwarder", workdir, ["--upstream", upstream_url], wrapper=wrapper
    )


GATEWAY_LOG_LEVEL = "warning"


# Where the bench's Redis + PostgreSQL runs go: the bench empties both before it uses them.
BENCH_REDIS_URL = os.environ.get("OLLAMA_GATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
BENCH_POSTGRES_URL = os.environ.get(
    "OLLAMA_GATE_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/perfgw"
)


def gateway(
    workdir: Path,
    upstream_url: str,
    database: Path | str,
    rate_limit: str,
    settings: dict[str, str] | None = None,
    workers: int = 1,
    name: str = "gateway",
    python_path: str | None = None,
    wrapper: Sequence[str] = (),
) -> Child:
    """One gateway, `python -m ollama_gate serve [--workers N]`, in `workdir`: SQLite usage logging when
    `database` is a path, else the database URL it is; `settings` adds or overrides OLLAMA_GATE_* variables;
    `python_path` goes first on PYTHONPATH (another build of the gateway, for --compare); `wrapper` runs
    the serving process (not its migration)."""
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{database}" if isinstance(database, Path) else database
    env = _python_env(
        {
            "OLLAMA_GATE_HOST": HOST,
            "OLLAMA_GATE_PORT": str(port),
            "OLLAMA_GATE_OLLAMA_URL": upstream_url,
            "OLLAMA_GATE_DATABASE_URL": database_url,
            "OLLAMA_GATE_LOG_LEVEL": GATEWAY_LOG_LEVEL,
            "OLLAMA_GATE_MEMBER_RATE_LIMIT": rate_limit,
            "OLLAMA_GATE_ANON_RATE_LIMIT": rate_limit,
            **(settings or {}),
        }
    )
    if python_path is not None:
        env["PYTHONPATH"] = python_path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Migrated first, as a deployment does: the serving process then finds its schema current and never
    # loads the migration tool (its memory is what the bench measures).
    subprocess.run(
        [sys.executable, "-m", "ollama_gate", "db", "upgrade"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    command = [*wrapper, sys.executable, "-m", "ollama_gate", "serve"]
    if workers > 1:
        command += ["--workers", str(workers)]
    child = Child(name, command, workdir, env, workdir / f"{name.replace(' ', '-')}.log")
    child.start(port, timeout=_start_timeout(wrapper, 60.0))
    return child


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (a supervisor and its workers)."""
    process = psutil.Process(pid)
    total = cpu_seconds(pid)
    for child in process.children(recursive=True):
        try:
            total += cpu_seconds(child.pid)
        except psutil.Error:
            continue
    return total


def reset_redis(url: str) -> None:
    """Flush the bench's Redis database (only that one: FLUSHDB)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def reset_postgres(url: str) -> None:
    """A fresh schema in the bench's PostgreSQL database: every table of an earlier run dropped. The
    database is created when the server does not have it yet (a new machine has only its defaults)."""
    import asyncio

    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def reset() -> None:
        try:
            connection = await asyncpg.connect(dsn)
        except asyncpg.InvalidCatalogNameError:
            await _create_database(dsn)
            connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
        finally:
            await connection.close()

    asyncio.run(reset())


async def _create_database(dsn: str) -> None:
    import asyncpg

    server, _, name = dsn.rpartition("/")
    name = name.split("?", 1)[0]
    maintenance = await asyncpg.connect(f"{server}/postgres")
    try:
        await maintenance.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass  # made by someone else meanwhile
    finally:
        await maintenance.close()


def run_load_client(mode: str, port: int, path: str, extra: list[str], timeout: float) -> dict[str, object]:
    """`python -m bench.load_client MODE ...` in its own process; its printed JSON object."""
    command = [sys.executable, "-m", "bench.load_client", mode, "--port", str(port), "--path", path, *extra]
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load client failed ({completed.returncode}):\n{completed.stderr}")
    decoded: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return decoded


def http_json(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def create_member_keys(gateway_url: str, users: int) -> list[str]:
    """One key per user, created through the gateway's API from loopback (loopback callers are admins)."""
    keys = []
    for index in range(users):
        answer = http_json(
            "POST", gateway_url + "/api/keys", {"user_id": f"bench-user-{index:03d}", "name": "bench"}
        )
        keys.append(str(answer["key"]))
    return keys


def usage_rows_by_status(database: Path) -> dict[int, int]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute("SELECT status, COUNT(*) FROM usage_logs GROUP BY status").fetchall()
    return {int(status): int(count) for status, count in rows}


def wait_for_usage_rows(database: Path, expected: int, timeout: float = 30.0) -> dict[int, int]:
    """The usage rows once `expected` of them are written or their count stops growing for 2 s."""
    deadline = time.monotonic() + timeout
    last_total, stable_since = -1, time.monotonic()
    rows: dict[int, int] = {}
    while time.monotonic() < deadline:
        rows = usage_rows_by_status(database)
        total = sum(rows.values())
        if total >= expected:
            return rows
        if total != last_total:
            last_total, stable_since = total, time.monotonic()
        elif time.monotonic() - stable_since > 2.0:
            return rows
        time.sleep(0.1)
    return rows


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of the resident set (VmHWM), if /proc has it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's RSS in a thread (psutil) while a load runs; `peak_mb` is the largest sample."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_mb = 0.0
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._process.memory_info().rss / 2**20
            except psutil.Error:
                return
            self.peak_mb = max(self.peak_mb, rss)
            self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
