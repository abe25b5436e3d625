"""Section 12: instructions per /chat, counted by callgrind: the one number here the machine's speed does
not move.

Throughput and latency on a shared machine drift by tens of percent within a run; a count of executed
instructions does not. Each process under test (the bare forwarder, the gateway, and with --compare the
gateway built from REV) runs under `valgrind --tool=callgrind --instr-atstart=no`, which counts nothing
until told to. After a warm-up, counting is switched on (`callgrind_control -i on`) for `requests`
requests sent one after another on one keep-alive connection, switched off, and dumped; the count per
request is the dump's total over `requests`. The same code counts the same to within about 2%.
Under valgrind a process runs tens of times slower, so the counts are of few requests, at one connection:
they say what a request costs, not how requests interleave under load.

A gateway writes its usage rows in batches, on a timer (every 0.25 s) or at once when 500 wait. Under
valgrind's slowed clock the timer would write a batch every few requests, each with a transaction's fixed
cost, where a loaded gateway writes 500 rows at a time: the count would then say more about valgrind's
speed than about a request. So the gateway is counted with its timer pushed out
(OLLAMA_GATE_USAGE_FLUSH_SECONDS=60), and warmed up and counted with as many requests as a full batch
(`requests` should be the gateway's batch size, 500): the warm-up's rows are one batch, written before
counting starts, and the counted requests' rows are exactly one more, whose write is counted (it is
theirs). A build from before that setting (a --compare REV) flushes on its own timer: its count includes
that.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench import processes
from bench.load_client import GATEWAY_BODY, _content_length, _status_of, build_request
from bench.processes import Child

Numbers = dict[str, float]
# The counted gateways' flush timer (see the docstring).
COUNTED_FLUSH = {"OLLAMA_GATE_USAGE_FLUSH_SECONDS": "60"}


def unavailable() -> str | None:
    """Why section 12 cannot run here, or None."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install valgrind)"
    return None


def callgrind(out_file: Path) -> list[str]:
    """The wrapper that runs a process under callgrind, counting nothing until switched on."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}"]


def _exchange(connection: socket.socket, request: bytes) -> int:
    """One request on `connection`: its answer's status, once the whole answer is in."""
    connection.sendall(request)
    received = b""
    while (end := received.find(b"\r\n\r\n")) < 0:
        chunk = connection.recv(65536)
        if not chunk:
            raise RuntimeError("the connection closed before an answer")
        received += chunk
    head = received[:end]
    length = _content_length(head) or 0
    while len(received) < end + 4 + length:
        chunk = connection.recv(65536)
        if not chunk:
            raise RuntimeError("the connection closed within an answer")
        received += chunk
    return _status_of(head)


def count(
    child: Child,
    keys: Sequence[str | None],
    requests: int,
    out_file: Path,
    usage_database: Path | None = None,
) -> tuple[float, int]:
    """Instructions per request of `child` (started under `callgrind(out_file)`), and how many of the
    counted requests were not answered 200. `requests` warm it up first, then `requests` are counted; with
    `usage_database` (a gateway's SQLite file) each lot's usage rows are waited for, the counted lot's
    while counting."""
    with connected(child) as connection:
        exchange_all(child, connection, keys, requests)
        _settle(usage_database, requests)
        _control(child, "-i", "on")
        not_200 = exchange_all(child, connection, keys, requests)
        _settle(usage_database, 2 * requests)
        _control(child, "-i", "off")
    _control(child, "--dump")
    return _totals(out_file) / requests, not_200


def connected(child: Child) -> socket.socket:
    """A keep-alive connection to `child`, its small writes sent at once."""
    connection = socket.create_connection((processes.HOST, child.port), timeout=300)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def exchange_all(child: Child, connection: socket.socket, keys: Sequence[str | None], requests: int) -> int:
    """`requests` `/chat` one after another on `connection`, the keys in turn: how many were not 200."""
    prepared = [build_request(processes.HOST, child.port, "/chat", GATEWAY_BODY, key) for key in keys]
    return sum(_exchange(connection, prepared[index % len(prepared)]) != 200 for index in range(requests))


def _settle(usage_database: Path | None, rows: int, timeout: float = 300.0) -> None:
    """Until `rows` usage rows are written (without a database: a moment for whatever a request left
    behind)."""
    if usage_database is None:
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while (written := sum(processes.usage_rows_by_status(usage_database).values())) < rows:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{written} usage rows written in {timeout:g} s, {rows} expected")
        time.sleep(0.2)


def _control(child: Child, *arguments: str) -> None:
    subprocess.run(
        ["callgrind_control", *arguments, str(child.pid)], check=True, capture_output=True, timeout=120
    )


def _totals(out_file: Path) -> float:
    """The count of the newest dump of `out_file` (callgrind numbers its dumps `<out_file>.<n>`)."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"), key=lambda path: path.stat().st_mtime)
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump beside {out_file}")
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return float(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


def measure(
    workdir: Path,
    gateway_settings: dict[str, str],
    rate_limit: str,
    requests: int,
    before_python_path: str | None = None,
) -> Numbers:
    """The numbers of section 12 (see the module's docstring)."""
    numbers: Numbers = {}
    with processes.fake_upstream(workdir, 1, 0.0, name="counted upstream") as upstream:
        out_file = workdir / "callgrind-bare.out"
        with processes.bare_forwarder(workdir, upstream.url, wrapper=callgrind(out_file)) as bare:
            per_request, not_200 = count(bare, [None], requests, out_file)
            numbers["instr_bare"], numbers["instr_bare_not_200"] = per_request, float(not_200)
        builds = {"gateway": None} | ({"before": before_python_path} if before_python_path else {})
        for name, python_path in builds.items():
            out_file = workdir / f"callgrind-{name}.out"
            database = workdir / f"counted-{name}.db"
            with processes.gateway(
                workdir,
                upstream.url,
                database,
                rate_limit,
                gateway_settings | COUNTED_FLUSH,
                name=f"counted {name}",
                python_path=python_path,
                wrapper=callgrind(out_file),
            ) as gateway:
                keys = processes.create_member_keys(gateway.url, 10)
                per_request, not_200 = count(gateway, keys, requests, out_file, database)
                numbers[f"instr_{name}"], numbers[f"instr_{name}_not_200"] = per_request, float(not_200)
    numbers["instr_gateway_over_bare"] = numbers["instr_gateway"] / numbers["instr_bare"]
    if "instr_before" in numbers:
        numbers["instr_gateway_over_before"] = numbers["instr_gateway"] / numbers["instr_before"]
    # The table's values are floats, counts included.
    numbers["instr_not_200"] = float(sum(value for key, value in numbers.items() if key.endswith("_not_200")))
    return numbers
