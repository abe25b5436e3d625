"""The command line and configuration as an operator meets them: start-up errors, banner, access log."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama, free_port
from tests.support.gateway import GatewayProcess, gateway_environment
from tests.support.gateway import run_cli as run_gateway_cli

ADMIN_TOKEN = "admin-token-that-must-never-be-printed-7f3a"
ACCESS_LINE = re.compile(r'"(GET|POST) (\S+) HTTP/1\.1" \d{3}')


def run_cli(args: list[str], workdir: Path, **values: str) -> subprocess.CompletedProcess[str]:
    # A start-up that wrongly succeeded would serve forever: the timeout turns that into a failure.
    return run_gateway_cli(args, workdir, values, timeout=30)


def wait_until_listening(
    host: str, port: int, process: subprocess.Popen[bytes], timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the gateway exited during start-up"
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s")


# -- invalid configuration stops start-up with one clear line ------------------------------------

INVALID_SETTINGS = {
    "a URL without scheme": ("OLLAMA_URL", "localhost:11434"),
    "a negative body limit": ("MAX_BODY_BYTES", "-5"),
    "a negative read timeout": ("READ_TIMEOUT", "-1"),
    "a rate that is not N/W": ("ANON_RATE_LIMIT", "ten per minute"),
    "a port out of range": ("PORT", "70000"),
    "an unknown log level": ("LOG_LEVEL", "loud"),
    "an unknown log format": ("LOG_FORMAT", "logfmt"),
    "a header bound below 1 KB": ("MAX_HEADER_BYTES", "100"),
    "a negative shutdown timeout": ("SHUTDOWN_TIMEOUT", "-1"),
    "no connections at all": ("MAX_CONNECTIONS", "0"),
}


@pytest.mark.parametrize(("variable", "value"), INVALID_SETTINGS.values(), ids=INVALID_SETTINGS.keys())
def test_invalid_configuration_stops_start_up_with_one_line_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    # A free port, so that a start-up that wrongly succeeds binds nothing anyone else uses.
    result = run_cli(["serve"], tmp_path, **({"PORT": str(free_port())} | {variable: value}))

    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert f"OLLAMA_GATE_{variable}" in output


def test_an_invalid_value_in_the_env_file_is_reported_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OLLAMA_GATE_CONNECT_TIMEOUT=soon\n")

    result = run_cli(["serve"], tmp_path, PORT=str(free_port()))

    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert "OLLAMA_GATE_CONNECT_TIMEOUT" in output


# -- the banner ---------------------------------------------------------------------------------


def test_serve_prints_its_url_and_effective_configuration_without_secrets(tmp_path: Path) -> None:
    port, env_port = free_port(), free_port()
    # The .env file is read; the process environment wins over it; the flags win over both.
    (tmp_path / ".env").write_text("OLLAMA_GATE_DEFAULT_MODEL=llama3.2:1b\nOLLAMA_GATE_READ_TIMEOUT=7\n")
    environment = gateway_environment(
        {
            "HOST": "127.0.0.2",
            "PORT": str(env_port),
            "READ_TIMEOUT": "42",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "OLLAMA_URL": "http://127.0.0.1:11999",
            "LOG_LEVEL": "warning",
        }
    )
    output_path = tmp_path / "serve.out"
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "ollama_gate", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening("127.0.0.1", port, process)
        assert httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)

    banner = output_path.read_text()
    assert f"http://127.0.0.1:{port}" in banner
    assert str(env_port) not in banner
    for shown in (
        "OLLAMA_GATE_OLLAMA_URL=http://127.0.0.1:11999",
        "OLLAMA_GATE_DEFAULT_MODEL=llama3.2:1b",
        "OLLAMA_GATE_READ_TIMEOUT=42",
        "OLLAMA_GATE_DATABASE_URL=",
        "OLLAMA_GATE_MAX_BODY_BYTES=10485760",
        "OLLAMA_GATE_CONNECT_TIMEOUT=5",
        "OLLAMA_GATE_LOG_LEVEL=warning",
        "OLLAMA_GATE_LOG_FORMAT=text",
        "OLLAMA_GATE_MAX_HEADER_BYTES=65536",
        "OLLAMA_GATE_HEADER_TIMEOUT=10",
        "OLLAMA_GATE_BODY_TIMEOUT=10",
        "OLLAMA_GATE_KEEPALIVE_TIMEOUT=5",
        "OLLAMA_GATE_MAX_CONNECTIONS=4096",
        "OLLAMA_GATE_SHUTDOWN_TIMEOUT=30",
        "OLLAMA_GATE_USAGE_FLUSH_SECONDS=0.25",
    ):
        assert shown in banner
    assert ADMIN_TOKEN not in banner
    assert "OLLAMA_GATE_ADMIN_TOKEN" in banner


def test_the_console_script_shows_help(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "ollama-gate"

    result = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0
    assert "serve" in result.stdout and "keys" in result.stdout


# -- the access log -----------------------------------------------------------------------------


def create_key(workdir: Path) -> str:
    """A real member key, made with the CLI in the gateway's working directory (same SQLite file)."""
    result = run_cli(["keys", "create", "--user-id", "alice"], workdir)
    assert result.returncode == 0, result.stderr
    secret: str = json.loads(result.stdout)["key"]
    return secret


def send_requests_with_keys(gate: GatewayProcess, secret: str) -> None:
    chats = [
        {"X-API-Key": secret},
        {"Authorization": f"Bearer {secret}"},
        {"X-API-Key": secret[:-4] + "AAAA"},  # a wrong key: refused, still logged, still not shown
    ]
    statuses = [
        httpx.post(gate.url + "/chat", json={"message": "log me"}, headers=headers, timeout=10).status_code
        for headers in chats
    ]
    assert statuses == [200, 200, 401]
    assert httpx.get(gate.url + "/api/status", timeout=10).status_code == 200


def access_lines(log: str) -> list[tuple[str, str]]:
    return [(match[1], match[2]) for match in ACCESS_LINE.finditer(log)]


def log_of_a_gateway_serving_a_member(workdir: Path, secret: str, log_level: str) -> str:
    """Everything a gateway at `log_level` logged while it served `secret`'s requests (and a wrong key's)."""
    with FakeOllama() as fake:
        gate = GatewayProcess(workdir, ollama_url=fake.url, log_level=log_level).start()
        try:
            send_requests_with_keys(gate, secret)
        finally:
            # Stopping the gateway flushes everything it logged.
            gate.terminate()
    return gate.log()


def test_at_info_each_request_is_one_access_line_without_the_key(tmp_path: Path) -> None:
    secret = create_key(tmp_path)

    log = log_of_a_gateway_serving_a_member(tmp_path, secret, "info")

    requests = [line for line in access_lines(log) if line[1] != "/schema/openapi.json"]
    assert requests == [("POST", "/chat")] * 3 + [("GET", "/api/status")]
    assert secret not in log
    assert secret[:-4] not in log


def test_at_warning_there_are_no_access_lines(tmp_path: Path) -> None:
    secret = create_key(tmp_path)

    log = log_of_a_gateway_serving_a_member(tmp_path, secret, "warning")

    assert access_lines(log) == []
    assert secret not in log


ACCESS_ADDRESS = re.compile(r'^.*?(\S+) "(?:GET|POST) (\S+) HTTP/1\.1" (\d{3})', re.MULTILINE)


def test_the_access_line_shows_the_address_the_gateway_decided_on(tmp_path: Path) -> None:
    """Behind a trusted proxy, the forwarded client; from anyone else, the peer, whatever it claims.
    (The audit found the spoofed X-Forwarded-For of a loopback caller in the access log.)"""
    with FakeOllama() as fake:
        gate = GatewayProcess(
            tmp_path, ollama_url=fake.url, log_level="info", env={"TRUSTED_PROXIES": "127.0.0.5"}
        ).start()
        try:
            for address, claimed in (("127.0.0.5", "198.51.100.7"), ("127.0.0.1", "203.0.113.66")):
                transport = httpx.HTTPTransport(local_address=address)
                with httpx.Client(transport=transport, timeout=10) as client:
                    headers = {"X-Forwarded-For": claimed}
                    assert (
                        client.post(gate.url + "/chat", json={"message": "hi"}, headers=headers).status_code
                        == 200
                    )
        finally:
            gate.terminate()
    lines = [(m[1], m[2]) for m in ACCESS_ADDRESS.finditer(gate.log()) if m[2] == "/chat"]
    assert lines == [("198.51.100.7", "/chat"), ("127.0.0.1", "/chat")]
