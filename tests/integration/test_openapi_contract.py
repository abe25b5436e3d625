"""The OpenAPI document is a contract: schemathesis, driven by `/schema/openapi.json`, against the real
gateway in front of the fake Ollama, as an admin and as a member.

Every phase (examples, coverage, fuzzing, stateful), a fixed seed and a bound on examples per operation,
so the run is the same every time and takes well under a minute per identity. It fails on any 5xx and on
any answer the document does not describe: an undocumented status, content type or header, a body that
does not match its schema, an `Allow` that does not match the path's methods.

Not checked: `positive_data_acceptance` (an admin's `POST /api/keys` needs a `user_id`, from the query
or the body, which OpenAPI cannot say) and `negative_data_rejection` (the pass-through forwards bodies
untouched: what it accepts is Ollama's business, and the fake is looser than Ollama).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

ADMIN_TOKEN = "schemathesis-admin-token"
SEED = 20261201
EXAMPLES_PER_OPERATION = 40
RUN_TIMEOUT = 150  # seconds; a run takes about 20 on this machine
# A member may revoke its own key (it is its right): created after these, its id is out of easy reach,
# and the run keeps testing as a member rather than as a revoked key.
DECOY_KEYS = 50
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "allow_header_conformance",
    "unsupported_method",
    "missing_required_header",
]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway of its own per run (a fresh database, a fresh fake): what one run creates, revokes or
    pulls cannot change what the other sees."""
    env = HIGH_LIMITS | {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "LISTING_RATE_LIMIT": "100000/60",
        "SHUTDOWN_TIMEOUT": "1",
    }
    with FakeOllamaServer() as fake, GatewayProcess(tmp_path, ollama_url=fake.url, env=env) as gateway:
        yield gateway


def schemathesis(
    gate: GatewayProcess, headers: dict[str, str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        gate.url + "/schema/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",  # no examples replayed from an earlier run: each run is the seed's, and only its
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--continue-on-failure",
        "--no-color",
    ]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def member_headers(gate: GatewayProcess) -> dict[str, str]:
    for _ in range(DECOY_KEYS):
        gate.create_key("decoy", headers=ADMIN)
    created = gate.create_key("member-1", headers=ADMIN)
    return {"Authorization": f"Bearer {created['key']}"}


@pytest.mark.parametrize("identity", ["admin", "member"])
def test_the_gateway_answers_as_its_openapi_document_says(
    gate: GatewayProcess, tmp_path: Path, identity: str
) -> None:
    headers = ADMIN if identity == "admin" else member_headers(gate)

    run = schemathesis(gate, headers, tmp_path)

    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counted is not None, run.stdout[-3000:]
    assert int(counted[1]) == int(counted[2]) > 1000, counted[0]
    # The run tested the identity it was given, to the end: the member's key was not revoked on the way.
    me = httpx.get(gate.url + "/api/me", headers=headers, timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["tier"] == ("admin" if identity == "admin" else "member")
