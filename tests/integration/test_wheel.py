"""The package carries everything it needs: a wheel built from the tree, installed outside it, serves.

The source tree is where the tests run from, so an import that works here proves nothing about what the
wheel holds (migrations, data files). The wheel is installed into a directory of its own, which comes
first on the gateway's import path; the gateway then creates its database from the shipped migrations.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    built, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(built), str(ROOT)], check=True, timeout=300)
    [wheel] = built.glob("ollama_gate-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300
    )
    yield target


def test_the_installed_wheel_is_what_runs(installed_wheel: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import ollama_gate; print(ollama_gate.__file__)"],
        env={"PYTHONPATH": str(installed_wheel)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed_wheel)
    assert not Path(where).is_relative_to(ROOT)


def test_the_installed_wheel_migrates_a_new_database_and_serves(
    installed_wheel: Path, tmp_path: Path
) -> None:
    with (
        FakeOllama() as fake,
        GatewayProcess(tmp_path, ollama_url=fake.url, python_path=installed_wheel) as gate,
    ):
        key = gate.create_key("wheel-user")["key"]  # the schema came from the wheel's migrations
        answer = gate.chat("hi", {"X-API-Key": key})
        status = gate.status()
        schema = httpx.get(gate.url + "/schema/openapi.json", timeout=10)

    assert answer.status_code == 200 and answer.json()["user"] == "wheel-user"
    assert status["usage"]["database_online"] is True
    assert schema.status_code == 200
    assert (tmp_path / "data" / "ollama-gate.db").is_file()


def test_the_installed_wheel_serves_the_console_pages_and_files(
    installed_wheel: Path, tmp_path: Path
) -> None:
    with (
        FakeOllama() as fake,
        GatewayProcess(tmp_path, ollama_url=fake.url, python_path=installed_wheel) as gate,
    ):
        login = httpx.get(gate.url + "/console/login", timeout=10)
        chart = httpx.get(gate.url + "/console/static/vendor/uPlot.iife.min.js", timeout=10)
        script = httpx.get(gate.url + "/console/static/console.js", timeout=10)
    assert login.status_code == 200 and "Admin token or API key" in login.text  # the template shipped
    assert chart.status_code == 200 and "uPlot" in chart.text and "max-age" in chart.headers["cache-control"]
    assert script.status_code == 200
    assert (installed_wheel / "ollama_gate/entrypoints/console/static/vendor/uPlot.LICENSE").is_file()
