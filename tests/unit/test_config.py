"""Configuration: defaults, the .env file, the environment winning, and one clear line per bad value."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.plans import Window
from ollama_gate.entrypoints.config import ConfigError, Settings, load_settings

VARIABLES = [
    "HOST",
    "PORT",
    "OLLAMA_URL",
    "DATABASE_URL",
    "DEFAULT_MODEL",
    "MAX_BODY_BYTES",
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "ADMIN_TOKEN",
    "USAGE_FLUSH_SECONDS",
    "ANON_RATE_LIMIT",
    "MEMBER_RATE_LIMIT",
    "TRUSTED_PROXIES",
    "MAX_HEADER_BYTES",
    "HEADER_TIMEOUT",
    "BODY_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "MAX_CONNECTIONS",
    "SHUTDOWN_TIMEOUT",
]


def test_defaults_without_any_configuration(tmp_path: Path) -> None:
    loaded = load_settings(environ={}, env_file=tmp_path / "missing.env")
    assert loaded == Settings()
    assert (loaded.host, loaded.port) == ("127.0.0.1", 8000)
    assert loaded.ollama_url == "http://127.0.0.1:11434"
    assert loaded.database_url == "sqlite+aiosqlite:///./data/ollama-gate.db"
    assert loaded.default_model == "smollm:latest"
    assert loaded.max_body_bytes == 10_485_760
    assert (loaded.connect_timeout, loaded.read_timeout) == (5.0, 300.0)
    assert loaded.log_level == "info"
    assert loaded.log_format == "text"
    assert loaded.admin_token is None
    assert loaded.anon_rate_limit == Window(10, 60)
    assert loaded.member_rate_limit == Window(30, 60)
    assert loaded.trusted_proxies == ()
    assert loaded.max_header_bytes == 65536
    assert (loaded.header_timeout, loaded.body_timeout, loaded.keepalive_timeout) == (10.0, 10.0, 5.0)
    assert loaded.max_connections == 4096
    assert loaded.shutdown_timeout == 30.0


def test_every_variable_is_read(tmp_path: Path) -> None:
    environ = {
        "OLLAMA_GATE_HOST": "0.0.0.0",
        "OLLAMA_GATE_PORT": "9000",
        "OLLAMA_GATE_OLLAMA_URL": "http://gpu-box:11434/",
        "OLLAMA_GATE_DATABASE_URL": "postgresql+asyncpg://gate:pw@db/gate",
        "OLLAMA_GATE_DEFAULT_MODEL": "llama3.2:1b",
        "OLLAMA_GATE_MAX_BODY_BYTES": "1024",
        "OLLAMA_GATE_CONNECT_TIMEOUT": "0.5",
        "OLLAMA_GATE_READ_TIMEOUT": "60",
        "OLLAMA_GATE_LOG_LEVEL": "WARNING",
        "OLLAMA_GATE_LOG_FORMAT": " JSON ",
        "OLLAMA_GATE_ADMIN_TOKEN": "s3cret",
        "OLLAMA_GATE_ANON_RATE_LIMIT": "5/30",
        "OLLAMA_GATE_MEMBER_RATE_LIMIT": "100/3600",
        "OLLAMA_GATE_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
        "OLLAMA_GATE_MAX_HEADER_BYTES": "16384",
        "OLLAMA_GATE_HEADER_TIMEOUT": "2.5",
        "OLLAMA_GATE_BODY_TIMEOUT": "20",
        "OLLAMA_GATE_KEEPALIVE_TIMEOUT": "75",
        "OLLAMA_GATE_MAX_CONNECTIONS": "50",
        "OLLAMA_GATE_SHUTDOWN_TIMEOUT": "0",
        "OLLAMA_GATE_USAGE_FLUSH_SECONDS": "2",
        "UNRELATED": "ignored",
    }
    loaded = load_settings(environ=environ, env_file=tmp_path / "missing.env")
    assert (loaded.host, loaded.port) == ("0.0.0.0", 9000)
    assert loaded.ollama_url == "http://gpu-box:11434"
    assert loaded.database_url == "postgresql+asyncpg://gate:pw@db/gate"
    assert loaded.default_model == "llama3.2:1b"
    assert loaded.max_body_bytes == 1024
    assert (loaded.connect_timeout, loaded.read_timeout) == (0.5, 60.0)
    assert loaded.log_level == "warning"
    assert loaded.log_format == "json"
    assert loaded.admin_token == "s3cret"
    assert loaded.anon_rate_limit == Window(5, 30)
    assert loaded.member_rate_limit == Window(100, 3600)
    assert loaded.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1"))
    assert loaded.max_header_bytes == 16384
    assert (loaded.header_timeout, loaded.body_timeout, loaded.keepalive_timeout) == (2.5, 20.0, 75.0)
    assert loaded.max_connections == 50
    assert loaded.shutdown_timeout == 0.0
    assert loaded.usage_flush_seconds == 2.0


def test_the_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# local settings\n"
        "OLLAMA_GATE_PORT=8123\n"
        "OLLAMA_GATE_DEFAULT_MODEL=from-file\n"
        'OLLAMA_GATE_ADMIN_TOKEN="quoted token"\n'
        "OTHER=1\n"
    )
    from_file = load_settings(environ={}, env_file=env_file)
    assert (from_file.port, from_file.default_model, from_file.admin_token) == (
        8123,
        "from-file",
        "quoted token",
    )
    both = load_settings(environ={"OLLAMA_GATE_DEFAULT_MODEL": "from-env"}, env_file=env_file)
    assert (both.port, both.default_model) == (8123, "from-env")


def test_an_invalid_value_in_the_env_file_is_named_too(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OLLAMA_GATE_READ_TIMEOUT=-3\n")
    with pytest.raises(ConfigError, match="OLLAMA_GATE_READ_TIMEOUT"):
        load_settings(environ={}, env_file=env_file)


def test_a_blank_admin_token_means_none(tmp_path: Path) -> None:
    loaded = load_settings(environ={"OLLAMA_GATE_ADMIN_TOKEN": "  "}, env_file=tmp_path / "missing.env")
    assert loaded.admin_token is None


def test_the_admin_token_is_not_in_the_banner_or_repr(tmp_path: Path) -> None:
    environ = {
        "OLLAMA_GATE_ADMIN_TOKEN": "s3cret-admin",
        "OLLAMA_GATE_DATABASE_URL": "postgresql+asyncpg://u:dbpass@h/d",
    }
    loaded = load_settings(environ=environ, env_file=tmp_path / "missing.env")
    banner = " ".join(loaded.public_view().values())
    assert "s3cret-admin" not in banner and "s3cret-admin" not in repr(loaded)
    assert "dbpass" not in banner
    assert "postgresql+asyncpg://u:***@h/d" in banner


INVALID = [
    ("HOST", "   "),
    ("PORT", "-1"),
    ("PORT", "0"),
    ("PORT", "65536"),
    ("PORT", "eighty"),
    ("OLLAMA_URL", "not a url"),
    ("OLLAMA_URL", "127.0.0.1:11434"),
    ("OLLAMA_URL", "ftp://127.0.0.1:11434"),
    ("OLLAMA_URL", "http://"),
    ("OLLAMA_URL", "http://127.0.0.1:99999"),
    ("OLLAMA_URL", "http://127.0.0.1:port"),
    ("OLLAMA_URL", "http://[::1"),
    ("OLLAMA_URL", ""),
    ("DATABASE_URL", "not a url"),
    ("DATABASE_URL", "mysql://u@h/db"),
    ("DATABASE_URL", "sqlite:///sync-driver.db"),
    ("DEFAULT_MODEL", ""),
    ("MAX_BODY_BYTES", "-5"),
    ("MAX_BODY_BYTES", "0"),
    ("MAX_BODY_BYTES", "10MB"),
    ("CONNECT_TIMEOUT", "-1"),
    ("CONNECT_TIMEOUT", "0"),
    ("CONNECT_TIMEOUT", "nan"),
    ("CONNECT_TIMEOUT", "soon"),
    ("READ_TIMEOUT", "-300"),
    ("LOG_LEVEL", "loud"),
    ("LOG_FORMAT", "xml"),
    ("LOG_FORMAT", ""),
    ("ANON_RATE_LIMIT", "10"),
    ("ANON_RATE_LIMIT", "0/60"),
    ("ANON_RATE_LIMIT", "10/0"),
    ("ANON_RATE_LIMIT", "-1/60"),
    ("MEMBER_RATE_LIMIT", "thirty per minute"),
    ("MEMBER_RATE_LIMIT", "30/-60"),
    ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.local"),
    ("TRUSTED_PROXIES", "10.0.0.0/33"),
    ("MAX_HEADER_BYTES", "64KB"),
    ("MAX_HEADER_BYTES", "0"),
    ("MAX_HEADER_BYTES", "1023"),
    ("HEADER_TIMEOUT", "0"),
    ("HEADER_TIMEOUT", "-1"),
    ("HEADER_TIMEOUT", "nan"),
    ("BODY_TIMEOUT", "0"),
    ("BODY_TIMEOUT", "ten"),
    ("KEEPALIVE_TIMEOUT", "-5"),
    ("MAX_CONNECTIONS", "0"),
    ("MAX_CONNECTIONS", "4096.5"),
    ("SHUTDOWN_TIMEOUT", "-1"),
    ("SHUTDOWN_TIMEOUT", "nan"),
    ("SHUTDOWN_TIMEOUT", "30s"),
    ("USAGE_FLUSH_SECONDS", "0"),
    ("USAGE_FLUSH_SECONDS", "inf"),
    ("USAGE_FLUSH_SECONDS", "61"),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_an_invalid_value_is_one_line_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={f"OLLAMA_GATE_{name}": value}, env_file=tmp_path / "missing.env")
    message = str(raised.value)
    assert f"OLLAMA_GATE_{name}" in message
    assert "\n" not in message


@settings(deadline=None, max_examples=300)
@given(name=st.sampled_from(VARIABLES), value=st.text(max_size=60))
def test_any_value_either_loads_or_names_its_variable(name: str, value: str) -> None:
    try:
        load_settings(environ={f"OLLAMA_GATE_{name}": value}, env_file=None)
    except ConfigError as error:
        assert f"OLLAMA_GATE_{name}:" in str(error)
        assert "\n" not in str(error)
