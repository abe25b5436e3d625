"""A clean stop loses nothing: every answered request is a usage row after a restart, and a request that
outlives the shutdown deadline (or a second signal) is cancelled and recorded as such."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import HIGH_LIMITS, GatewayProcess
from tests.support.services import shared_redis_url

REQUESTS = 300
CONNECTIONS = 60
# The signal goes out once this many answers are back: the rest are queued, in flight or not yet sent.
SIGNAL_AFTER_ANSWERS = 40
SLOW_STREAMS = 10


async def one_request(client: httpx.AsyncClient, url: str, index: int) -> int | None:
    """The status of a completed answer, or None when the gateway turned the request away or cut it."""
    slow = index < SLOW_STREAMS
    endpoint = "/chat/stream" if slow or index % 3 == 0 else "/chat"
    message = "!slow" if slow else f"load {index}"
    try:
        async with client.stream("POST", url + endpoint, json={"message": message}) as response:
            body = await response.aread()
    except httpx.TransportError:
        return None
    if endpoint == "/chat/stream" and response.status_code == 200 and b'"done":true' not in body:
        return None  # a stream cut short was not answered
    return response.status_code


async def load_with_signal(gate: GatewayProcess, sig: signal.Signals) -> tuple[Counter[int | None], int]:
    """Fire REQUESTS requests at once, signal the gateway while they run; (statuses, exit code)."""
    process = gate.process
    assert process is not None
    answered = 0
    signalled = asyncio.Event()
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def counted(index: int) -> int | None:
            nonlocal answered
            status = await one_request(client, gate.url, index)
            answered += 1
            if answered == SIGNAL_AFTER_ANSWERS:
                process.send_signal(sig)
                signalled.set()
            return status

        statuses = await asyncio.gather(*(counted(i) for i in range(REQUESTS)))
    assert signalled.is_set()
    # Wait without signalling again: a second signal stops at once (what is in flight is cancelled).
    exit_code = await asyncio.to_thread(process.wait, 30)
    return Counter(statuses), exit_code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_clean_stop_under_load_records_every_answered_request(
    tmp_path: Path, module_ollama: FakeOllama, sig: signal.Signals
) -> None:
    gate = GatewayProcess(tmp_path, ollama_url=module_ollama.url, env=HIGH_LIMITS).start()
    try:
        statuses, exit_code = await load_with_signal(gate, sig)
    finally:
        gate.kill()

    with GatewayProcess(tmp_path, ollama_url=module_ollama.url, env=HIGH_LIMITS) as restarted:
        rows = httpx.get(restarted.url + "/api/usage", params={"limit": 1000}, timeout=10).json()["logs"]

    answered_ok = statuses[200]
    # The signal really landed mid-load: some answers came before it and some requests were turned away.
    assert SIGNAL_AFTER_ANSWERS <= answered_ok < REQUESTS, statuses
    assert set(statuses) <= {200, None}, statuses
    assert exit_code == 0, gate.log()[-3000:]
    assert "Traceback" not in gate.log()
    assert len(rows) == answered_ok, (statuses, Counter((row["endpoint"], row["outcome"]) for row in rows))
    assert {row["outcome"] for row in rows} == {"ok"}
    assert {row["status"] for row in rows} == {200}
    slow_streams = [row for row in rows if row["endpoint"] == "/chat/stream"]
    assert slow_streams and all(row["completion_tokens"] for row in slow_streams)


# -- a deadline for requests that never end ------------------------------------------------------------

# A request the fake Ollama never answers: only the shutdown deadline (or a second signal) ends it.
HANG = "!hang"
# The grace a stop may take beyond its deadline: cancelling, the lifespan shutdown, the usage flush.
STOP_MARGIN = 8.0


def usage_rows_in_database(workdir: Path) -> list[tuple[str, int, str]]:
    """(endpoint, status, outcome) of every row in the gateway's SQLite database, read after it exited."""
    with contextlib.closing(sqlite3.connect(workdir / "data" / "ollama-gate.db")) as database:
        return list(database.execute("SELECT endpoint, status, outcome FROM usage_logs ORDER BY id"))


async def hung_chat(url: str, prompt: str) -> int | None:
    """POST /chat with a prompt the fake never answers: the status the client got, None if it was cut."""
    async with httpx.AsyncClient(timeout=120) as client:
        try:
            return (await client.post(url + "/chat", json={"message": prompt})).status_code
        except httpx.TransportError:
            return None


def stopped_accepting(gate: GatewayProcess) -> bool:
    try:
        with socket.create_connection((gate.host, gate.port), timeout=0.2):
            return False
    except OSError:
        return True


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.05)
    return False


async def stop_with_hung_requests(
    gate: GatewayProcess,
    fake: FakeOllama,
    signals: Sequence[signal.Signals],
    prompts: Sequence[str],
) -> tuple[list[int | None], int, float]:
    """Leave `prompts` hung at the fake, send `signals` (each once the previous one stopped the listening
    socket); (what the hung clients got, exit code, seconds from the last signal to the exit)."""
    process = gate.process
    assert process is not None
    clients = [asyncio.create_task(hung_chat(gate.url, prompt)) for prompt in prompts]
    try:
        assert await wait_for(lambda: all(fake.seen.requests_with_prompt(p) for p in prompts))
        for index, sig in enumerate(signals):
            if index:
                assert await wait_for(lambda: stopped_accepting(gate)), "the first signal was not handled"
                await asyncio.sleep(0.3)
            process.send_signal(sig)
            signalled = time.monotonic()
        exit_code = await asyncio.to_thread(process.wait, 60)
        exited_in = time.monotonic() - signalled
    finally:
        gate.kill()
    return list(await asyncio.gather(*clients)), exit_code, exited_in


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_cancels_what_outlives_the_deadline_and_records_it(
    tmp_path: Path, fake_ollama: FakeOllama, sig: signal.Signals
) -> None:
    gate = GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env={"SHUTDOWN_TIMEOUT": "2"}).start()

    answers, exit_code, exited_in = await stop_with_hung_requests(
        gate, fake_ollama, [sig], [f"{HANG} deadline {sig.name}"]
    )

    print(f"\n{sig.name} with a hung request, SHUTDOWN_TIMEOUT=2: exited in {exited_in:.2f} s")
    assert exited_in < 2 + STOP_MARGIN
    assert exit_code == 0, gate.log()[-3000:]
    assert "Traceback" not in gate.log()
    # The client is told the server is going away rather than left hanging.
    assert answers == [503]
    assert usage_rows_in_database(tmp_path) == [("/chat", 499, "cancelled")]


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)],
    ids=["SIGTERM-SIGTERM", "SIGINT-SIGINT", "SIGTERM-SIGINT"],
)
async def test_a_second_signal_stops_at_once_and_still_records_the_request(
    tmp_path: Path, fake_ollama: FakeOllama, signals: tuple[signal.Signals, signal.Signals]
) -> None:
    gate = GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env={"SHUTDOWN_TIMEOUT": "60"}).start()

    answers, exit_code, exited_in = await stop_with_hung_requests(
        gate, fake_ollama, signals, [f"{HANG} twice {signals[0].name}-{signals[1].name}"]
    )

    print(f"\n{signals[1].name} after {signals[0].name}, SHUTDOWN_TIMEOUT=60: exited {exited_in:.2f} s later")
    assert exited_in < STOP_MARGIN
    assert exit_code == 0, gate.log()[-3000:]
    assert "Traceback" not in gate.log()
    assert answers == [503]
    assert usage_rows_in_database(tmp_path) == [("/chat", 499, "cancelled")]


def worker_connections(supervisor_pid: int, port: int) -> dict[int, int]:
    """How many client connections on `port` each worker process of the supervisor holds (its other
    child, multiprocessing's resource tracker, is left out)."""
    held: dict[int, int] = {}
    for worker in psutil.Process(supervisor_pid).children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" not in " ".join(worker.cmdline()):
                continue
            held[worker.pid] = sum(
                1
                for connection in worker.net_connections(kind="tcp")
                if connection.laddr and connection.laddr.port == port and connection.status == "ESTABLISHED"
            )
    return held


@pytest.mark.parametrize("second_signal", [False, True], ids=["deadline", "second-SIGTERM"])
async def test_workers_stop_within_the_deadline_and_each_records_its_requests(
    tmp_path: Path, fake_ollama: FakeOllama, second_signal: bool
) -> None:
    timeout = 60 if second_signal else 2
    gate = GatewayProcess(
        tmp_path,
        ollama_url=fake_ollama.url,
        env={"REDIS_URL": shared_redis_url(), "SHUTDOWN_TIMEOUT": str(timeout)} | HIGH_LIMITS,
        args=["--workers", "2"],
    ).start()
    assert gate.process is not None
    supervisor = gate.process.pid
    clients: list[asyncio.Task[int | None]] = []
    try:
        # Hung requests until each worker holds at least one (which worker accepts is the kernel's choice).
        for index in range(20):
            prompt = f"{HANG} worker {index}"
            clients.append(asyncio.create_task(hung_chat(gate.url, prompt)))
            assert await wait_for(lambda p=prompt: bool(fake_ollama.seen.requests_with_prompt(p)))  # type: ignore[misc]
            held = await asyncio.to_thread(worker_connections, supervisor, gate.port)
            if len(held) == 2 and all(held.values()):
                break
        assert len(held) == 2 and all(held.values()), held
        workers = list(held)

        signals = [signal.SIGTERM, signal.SIGTERM] if second_signal else [signal.SIGTERM]
        for index, sig in enumerate(signals):
            if index:
                assert await wait_for(lambda: stopped_accepting(gate)), "the first signal was not handled"
                await asyncio.sleep(0.5)
            gate.process.send_signal(sig)
            signalled = time.monotonic()
        exit_code = await asyncio.to_thread(gate.process.wait, 60)
        exited_in = time.monotonic() - signalled
    finally:
        gate.kill()
    answers = await asyncio.gather(*clients)

    print(
        f"\n--workers 2, {len(clients)} hung requests {held}, SHUTDOWN_TIMEOUT={timeout}: "
        f"the supervisor exited {exited_in:.2f} s after the {'second ' if second_signal else ''}SIGTERM"
    )
    assert exited_in < (0 if second_signal else timeout) + STOP_MARGIN
    assert exit_code == 0, gate.log()[-3000:]
    assert "Traceback" not in gate.log()
    assert not any(psutil.pid_exists(pid) for pid in workers)
    assert set(answers) == {503}, answers
    assert usage_rows_in_database(tmp_path) == [("/chat", 499, "cancelled")] * len(clients)


async def test_ctrl_c_with_workers_drains_rather_than_stopping_at_once(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    # Ctrl+C in a terminal signals the whole process group: the supervisor and every worker get SIGINT,
    # and the supervisor then sends each worker SIGTERM. That must count as one stop, not two.
    gate = GatewayProcess(
        tmp_path,
        ollama_url=fake_ollama.url,
        env={"REDIS_URL": shared_redis_url(), "SHUTDOWN_TIMEOUT": "60"} | HIGH_LIMITS,
        args=["--workers", "2"],
        new_session=True,
        log_level="info",  # for the supervisor's "Terminated child process" lines
    ).start()
    assert gate.process is not None
    try:
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", gate.url + "/chat/stream", json={"message": "!held ctrl-c"}) as response,
        ):
            lines = response.aiter_lines()
            first = await anext(lines)  # the stream is under way, held at the fake
            os.killpg(gate.process.pid, signal.SIGINT)
            assert await wait_for(lambda: stopped_accepting(gate)), "the SIGINT was not handled"
            # The supervisor has relayed the stop to both workers as SIGTERM (each now had two signals).
            assert await wait_for(lambda: gate.log().count("Terminated child process") == 2)
            await asyncio.sleep(0.3)
            # A drain, not a force-quit: the stream still runs to its end once the fake lets it go.
            fake_ollama.release_held()
            rest = [line async for line in lines]
            exit_code = await asyncio.to_thread(gate.process.wait, 30)
    finally:
        gate.kill()

    assert response.status_code == 200 and '"done":false' in first
    assert rest and '"done":true' in rest[-1], rest
    assert exit_code == 0, gate.log()[-3000:]
    assert "Traceback" not in gate.log()
    assert usage_rows_in_database(tmp_path) == [("/chat/stream", 200, "ok")]


# -- the usage timer -------------------------------------------------------------------------------------


async def test_rows_wait_for_the_usage_timer_and_a_stop_writes_them(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    gate = GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env={"USAGE_FLUSH_SECONDS": "60"}).start()
    try:
        answers = [gate.chat(f"timer {index}").status_code for index in range(3)]
        # Well past the default interval (0.25 s): with a 60 s timer and no full batch, nothing is written.
        await asyncio.sleep(1.5)
        written_before_stop = usage_rows_in_database(tmp_path)
        exit_code = gate.terminate()
    finally:
        gate.kill()

    assert answers == [200, 200, 200]
    assert written_before_stop == []
    assert exit_code == 0, gate.log()[-3000:]
    assert usage_rows_in_database(tmp_path) == [("/chat", 200, "ok")] * 3
