"""The real gateway in a subprocess (`python -m ollama_gate serve`), on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from tests.support.fake_ollama import free_port


class GatewayProcess:
    """Start with `with GatewayProcess(tmp_path, ollama_url=...) as gate:` and talk to `gate.url`.

    Every OLLAMA_GATE_* variable comes from `env` (names without the prefix are accepted too); the
    working directory is `workdir`, so the default SQLite database lands in `workdir/data/`.
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
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.env = {
            "OLLAMA_GATE_OLLAMA_URL": ollama_url,
            "OLLAMA_GATE_HOST": host,
            "OLLAMA_GATE_PORT": str(self.port),
            "OLLAMA_GATE_LOG_LEVEL": log_level,
        }
        for name, value in (env or {}).items():
            self.env[name if name.startswith("OLLAMA_GATE_") else "OLLAMA_GATE_" + name] = value
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GATE_")}
        environment.update(self.env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ollama_gate", "serve", *self.args],
            cwd=self.workdir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
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
        finally:
            self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
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
