"""The real gateway in a subprocess (`python -m ollama_gate serve`), on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from tests.support.fake_ollama import free_port

# Limits that never get in the way of tests about something else: rate limits, and the GPU queue's slots
# and bounds (the queue still runs, it never makes anyone wait or turns anyone away).
HIGH_LIMITS = {
    "ANON_RATE_LIMIT": "100000/60",
    "MEMBER_RATE_LIMIT": "100000/60",
    "SLOTS": "100000",
    "MAX_QUEUE": "100000",
    "MAX_QUEUED_PER_IDENTITY": "100000",
}
# The background writer stores usage rows every 250 ms: poll this many times, 100 ms apart, for them.
USAGE_POLLS = 50


def prefixed(values: Mapping[str, str]) -> dict[str, str]:
    """`values` with every name in its OLLAMA_GATE_* form (names without the prefix get it)."""
    return {
        name if name.startswith("OLLAMA_GATE_") else "OLLAMA_GATE_" + name: v for name, v in values.items()
    }


def gateway_environment(values: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any OLLAMA_GATE_* of its own, plus `values` (see `prefixed`)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GATE_")}
    return environment | prefixed(values)


def run_cli(
    args: Sequence[str], workdir: Path, values: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`python -m ollama_gate *args` in `workdir` with gateway_environment(values); its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "ollama_gate", *args],
        cwd=workdir,
        env=gateway_environment(values),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class GatewayProcess:
    """Start with `with GatewayProcess(tmp_path, ollama_url=...) as gate:` and talk to `gate.url`.

    Every OLLAMA_GATE_* variable comes from `env` (names without the prefix are accepted too); the
    working directory is `workdir`, so the default SQLite database lands in `workdir/data/`. With
    `python_path`, the package is imported from there rather than from the source tree.
    """

    def __init__(
        self,
        workdir: Path,
        ollama_url: str = "http://127.0.0.1:9",
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_level: str = "warning",
        args: Sequence[str] = (),
        python_path: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.workdir = workdir
        # In a session (and process group) of its own, a test can signal the gateway and all its workers
        # at once, as Ctrl+C in a terminal does, without signalling itself.
        self.new_session = new_session
        self.host = host
        self.port = port or free_port(host)
        self.env = prefixed(
            {"OLLAMA_URL": ollama_url, "HOST": host, "PORT": str(self.port), "LOG_LEVEL": log_level}
            | (env or {})
        )
        self.args = list(args)
        self.python_path = python_path
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        environment = gateway_environment(self.env)
        if self.python_path is not None:
            # Importable from there first: e.g. a wheel installed outside the source tree.
            environment["PYTHONPATH"] = str(self.python_path)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ollama_gate", "serve", *self.args],
            cwd=self.workdir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            if self._accepting():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gateway did not start within {timeout}s:\n{self.log()}")

    def _accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                pass
        except OSError:
            return False
        try:
            return httpx.get(self.url + "/schema/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()  # a gateway that does not stop must not outlive the test
            raise
        finally:
            self.process = None

    def kill(self) -> None:
        """SIGKILL the gateway and its children (the workers of `serve --workers N`, which would
        otherwise outlive a killed supervisor and keep its port)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.process.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.terminate()

    # -- the API, as the tests call it (every call bounded by a 10 s timeout) ---------------------------

    def create_key(
        self, user_id: str, name: str | None = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """A new key for `user_id` (as the loopback admin unless `headers` say who asks): the 201 body."""
        params = {"user_id": user_id} | ({"name": name} if name is not None else {})
        response = httpx.post(self.url + "/api/keys", params=params, headers=headers, timeout=10)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def chat(
        self, message: str, headers: Mapping[str, str] | None = None, endpoint: str = "/chat", **fields: Any
    ) -> httpx.Response:
        """POST `message` (and any other body `fields`) to /chat or /chat/stream; a stream is read whole."""
        return httpx.post(
            self.url + endpoint, json={"message": message, **fields}, headers=headers, timeout=10
        )

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m ollama_gate *args` with this gateway's configuration, in its working directory."""
        return run_cli(args, self.workdir, self.env, timeout=60)

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = httpx.get(self.url + "/api/status", timeout=10).json()
        return document

    def usage_rows(
        self,
        expected: int,
        user_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        where: Callable[[dict[str, Any]], bool] = lambda row: True,
    ) -> list[dict[str, Any]]:
        """The usage rows (newest first; one user's with `user_id`; those `where` accepts) once at least
        `expected` of them are stored: rows land in the background, so this polls, USAGE_POLLS times at
        most. When the polls run out it returns what it found, for the caller's assertion to show."""
        params: dict[str, str | int] = {"limit": 1000} | ({"user_id": user_id} if user_id is not None else {})
        rows: list[dict[str, Any]] = []
        for _ in range(USAGE_POLLS):
            response = httpx.get(self.url + "/api/usage", params=params, headers=headers, timeout=10)
            rows = [row for row in response.json()["logs"] if where(row)]
            if len(rows) >= expected:
                break
            time.sleep(0.1)
        return rows
