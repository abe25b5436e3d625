"""Configuration from OLLAMA_GATE_* environment variables (and a `.env` file in the working directory)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ollama_gate.domain.client_address import DEFAULT_IPV6_PREFIX, ForwardedHeader, Network, parse_networks
from ollama_gate.domain.plans import Window

PREFIX = "OLLAMA_GATE_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
MIN_HEADER_BYTES = 1024
CONSOLE_SECRET_MIN_CHARS = 32
MAX_USAGE_FLUSH_SECONDS = 60.0

T = TypeVar("T")


class ConfigError(ValueError):
    """One clear line naming the variable that is wrong."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"invalid configuration: {PREFIX}{variable}: {message}")


@dataclass(frozen=True)
class UpstreamSetting:
    """One Ollama server: its URL, the name errors, logs and metrics call it by (never its address), and
    the slots per model it gets when its URL says so (`#slots=2`; None: `OLLAMA_GATE_SLOTS`)."""

    url: str
    name: str
    slots: int | None = None


_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    upstreams: tuple[UpstreamSetting, ...] = (UpstreamSetting("http://127.0.0.1:11434", "ollama-1"),)
    database_url: str = field(default="sqlite+aiosqlite:///./data/ollama-gate.db", repr=False)
    default_model: str = "smollm:latest"
    max_body_bytes: int = 10 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    log_level: str = "info"
    log_format: str = "text"
    admin_token: str | None = field(default=None, repr=False)
    anon_rate_limit: Window = Window(10, 60)
    member_rate_limit: Window = Window(30, 60)
    listing_rate_limit: Window = Window(120, 60)
    trusted_proxies: tuple[Network, ...] = ()
    forwarded_header: ForwardedHeader = ForwardedHeader.X_FORWARDED_FOR
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    database_timeout: float = 2.0
    lease_seconds: float = 10.0
    slots: int = 4
    metrics_public: bool = False
    max_queue: int = 1000
    max_queued_per_identity: int = 8
    auto_migrate: bool = True
    redis_url: str | None = field(default=None, repr=False)
    rate_limit_fallback: str = "local"
    max_header_bytes: int = 65536
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 4096
    shutdown_timeout: float = 30.0
    console_secret: str | None = field(default=None, repr=False)
    console_session_hours: float = 8.0
    usage_flush_seconds: float = 0.25

    @property
    def ollama_urls(self) -> tuple[str, ...]:
        return tuple(upstream.url for upstream in self.upstreams)

    @property
    def ollama_url(self) -> str:
        return self.ollama_urls[0]

    def slots_of(self) -> dict[str, int | None]:
        """Each upstream's slots per model: its URL's `#slots=N`, else OLLAMA_GATE_SLOTS; None where the
        gateway does not limit (0). With OLLAMA_GATE_SLOTS=0 the queue is off altogether."""
        if self.slots == 0:
            return dict.fromkeys((u.name for u in self.upstreams), None)
        return {u.name: (u.slots if u.slots is not None else self.slots) or None for u in self.upstreams}

    def public_view(self) -> dict[str, str]:
        """The effective configuration for the start-up banner: no secrets, no database password."""
        return {
            "OLLAMA_GATE_OLLAMA_URL": ",".join(_upstream_text(u) for u in self.upstreams),
            "OLLAMA_GATE_DATABASE_URL": make_url(self.database_url).render_as_string(hide_password=True),
            "OLLAMA_GATE_DEFAULT_MODEL": self.default_model,
            "OLLAMA_GATE_MAX_BODY_BYTES": str(self.max_body_bytes),
            "OLLAMA_GATE_CONNECT_TIMEOUT": f"{self.connect_timeout:g}",
            "OLLAMA_GATE_READ_TIMEOUT": f"{self.read_timeout:g}",
            "OLLAMA_GATE_LOG_LEVEL": self.log_level,
            "OLLAMA_GATE_LOG_FORMAT": self.log_format,
            "OLLAMA_GATE_ADMIN_TOKEN": "(set)"
            if self.admin_token
            else "(not set: loopback callers are admins)",
            "OLLAMA_GATE_ANON_RATE_LIMIT": self.anon_rate_limit.text,
            "OLLAMA_GATE_MEMBER_RATE_LIMIT": self.member_rate_limit.text,
            "OLLAMA_GATE_LISTING_RATE_LIMIT": self.listing_rate_limit.text,
            "OLLAMA_GATE_TRUSTED_PROXIES": ",".join(str(n) for n in self.trusted_proxies) or "(none)",
            "OLLAMA_GATE_FORWARDED_HEADER": self.forwarded_header.value,
            "OLLAMA_GATE_IPV6_PREFIX": str(self.ipv6_prefix),
            "OLLAMA_GATE_DATABASE_TIMEOUT": f"{self.database_timeout:g}",
            "OLLAMA_GATE_LEASE_SECONDS": f"{self.lease_seconds:g}",
            "OLLAMA_GATE_SLOTS": str(self.slots) if self.slots else "0 (the gateway's queue is off)",
            "OLLAMA_GATE_MAX_QUEUE": str(self.max_queue),
            "OLLAMA_GATE_METRICS_PUBLIC": str(self.metrics_public).lower(),
            "OLLAMA_GATE_MAX_QUEUED_PER_IDENTITY": str(self.max_queued_per_identity),
            "OLLAMA_GATE_AUTO_MIGRATE": str(self.auto_migrate).lower(),
            "OLLAMA_GATE_REDIS_URL": _hide_password(self.redis_url)
            if self.redis_url
            else "(not set: in-process limiter)",
            "OLLAMA_GATE_RATE_LIMIT_FALLBACK": self.rate_limit_fallback,
            "OLLAMA_GATE_MAX_HEADER_BYTES": str(self.max_header_bytes),
            "OLLAMA_GATE_HEADER_TIMEOUT": f"{self.header_timeout:g}",
            "OLLAMA_GATE_BODY_TIMEOUT": f"{self.body_timeout:g}",
            "OLLAMA_GATE_KEEPALIVE_TIMEOUT": f"{self.keepalive_timeout:g}",
            "OLLAMA_GATE_MAX_CONNECTIONS": str(self.max_connections),
            "OLLAMA_GATE_SHUTDOWN_TIMEOUT": f"{self.shutdown_timeout:g}",
            "OLLAMA_GATE_USAGE_FLUSH_SECONDS": f"{self.usage_flush_seconds:g}",
            "OLLAMA_GATE_CONSOLE_SECRET": "(set)"
            if self.console_secret
            else "(not set: generated at start, console sessions end at restart)",
            "OLLAMA_GATE_CONSOLE_SESSION_HOURS": f"{self.console_session_hours:g}",
        }


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@")).geturl()


def _redis_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
        raise ValueError(f"expected redis://host:6379/0, got {text!r}")
    _ = parts.port
    return text


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _fallback(text: str) -> str:
    value = text.strip().lower()
    if value not in ("local", "deny"):
        raise ValueError(f"expected local or deny, got {text!r}")
    return value


def _http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:11434, got {text!r}")
    _ = parts.port  # raises ValueError on a malformed port
    return text.strip().rstrip("/")


def _upstream(text: str, position: int) -> UpstreamSetting:
    """`http://gpu1:11434#name=gpu1&slots=2`: the options ride in the URL's fragment."""
    url, _, fragment = text.strip().partition("#")
    options: dict[str, str] = {}
    for option in filter(None, re.split(r"[&;]", fragment)):
        key, equals, value = option.partition("=")
        if not equals or key.strip() not in ("name", "slots"):
            raise ValueError(f"unknown option {option!r} after '#' (use name=... and slots=N)")
        options[key.strip()] = value.strip()
    name = options.get("name", f"ollama-{position}")
    if _UPSTREAM_NAME.fullmatch(name) is None:
        raise ValueError(f"an upstream name is 1-64 letters, digits, '_', '.', '-', got {name!r}")
    slots = None
    if "slots" in options:
        slots = int(options["slots"])
        if slots < 0:
            raise ValueError(f"slots must be 0 or more, got {options['slots']!r}")
    return UpstreamSetting(_http_url(url), name, slots)


def _upstreams(text: str) -> tuple[UpstreamSetting, ...]:
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("at least one URL is required")
    upstreams = tuple(_upstream(part, position) for position, part in enumerate(parts, start=1))
    names = [upstream.name for upstream in upstreams]
    if len(set(names)) != len(names):
        raise ValueError(f"upstream names must differ, got {', '.join(names)}")
    return upstreams


def _upstream_text(upstream: UpstreamSetting) -> str:
    options = [f"name={upstream.name}"] + ([f"slots={upstream.slots}"] if upstream.slots is not None else [])
    return f"{upstream.url}#{'&'.join(options)}"


def _database_url(text: str) -> str:
    try:
        url = make_url(text)
    except ArgumentError as error:
        raise ValueError(f"not a database URL: {text!r}") from error
    if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(f"use sqlite+aiosqlite:///path or postgresql+asyncpg://..., got {url.drivername!r}")
    return text


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"expected a port between 1 and 65535, got {text!r}")
    return port


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected 0 or a positive integer, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


def _flush_seconds(text: str) -> float:
    # Rows wait in memory until written: a killed process loses at most this long of them.
    value = float(text)
    if not 0 < value <= MAX_USAGE_FLUSH_SECONDS:
        raise ValueError(f"expected seconds above 0, at most {MAX_USAGE_FLUSH_SECONDS:g}, got {text!r}")
    return value


def _forwarded_header(text: str) -> ForwardedHeader:
    try:
        return ForwardedHeader(text.strip().lower())
    except ValueError:
        names = ", ".join(header.value for header in ForwardedHeader)
        raise ValueError(f"expected one of {names}, got {text!r}") from None


def _ipv6_prefix(text: str) -> int:
    prefix = int(text)
    if not 1 <= prefix <= 128:
        raise ValueError(f"expected a prefix length between 1 and 128, got {text!r}")
    return prefix


def _header_bytes(text: str) -> int:
    value = int(text)
    if value < MIN_HEADER_BYTES:
        # Below this, ordinary browsers' heads (cookies, user agents) would be refused.
        raise ValueError(f"expected at least {MIN_HEADER_BYTES} bytes, got {text!r}")
    return value


def _non_negative_seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"expected a number of seconds, 0 or more, got {text!r}")
    return value


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {text!r}")
    return value


def _console_secret(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if len(text) < CONSOLE_SECRET_MIN_CHARS:
        raise ValueError(
            f"expected at least {CONSOLE_SECRET_MIN_CHARS} characters (e.g. openssl rand -hex 32)"
        )
    return text


def _session_hours(text: str) -> float:
    value = float(text)
    if not 0 < value <= 24 * 30:
        raise ValueError(f"expected a number of hours above 0 and at most 720, got {text!r}")
    return value


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def read_environment(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> dict[str, str]:
    """OLLAMA_GATE_* variables: the process environment wins over the `.env` file."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return {k[len(PREFIX) :]: v for k, v in values.items() if k.startswith(PREFIX)}


def load_settings(environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> Settings:
    """Settings from the environment; raises ConfigError naming the first invalid variable."""
    values = read_environment(environ, env_file)
    defaults = Settings()

    def get(name: str, parse: Callable[[str], T], default: T) -> T:
        raw = values.get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as error:
            raise ConfigError(name, str(error)) from None

    return Settings(
        host=get("HOST", _non_empty, defaults.host),
        port=get("PORT", _port, defaults.port),
        upstreams=get("OLLAMA_URL", _upstreams, defaults.upstreams),
        database_url=get("DATABASE_URL", _database_url, defaults.database_url),
        default_model=get("DEFAULT_MODEL", _non_empty, defaults.default_model),
        max_body_bytes=get("MAX_BODY_BYTES", _positive_int, defaults.max_body_bytes),
        connect_timeout=get("CONNECT_TIMEOUT", _positive_seconds, defaults.connect_timeout),
        read_timeout=get("READ_TIMEOUT", _positive_seconds, defaults.read_timeout),
        log_level=get("LOG_LEVEL", _log_level, defaults.log_level),
        log_format=get("LOG_FORMAT", _log_format, defaults.log_format),
        admin_token=get("ADMIN_TOKEN", lambda t: t.strip() or None, defaults.admin_token),
        anon_rate_limit=get("ANON_RATE_LIMIT", Window.parse, defaults.anon_rate_limit),
        member_rate_limit=get("MEMBER_RATE_LIMIT", Window.parse, defaults.member_rate_limit),
        listing_rate_limit=get("LISTING_RATE_LIMIT", Window.parse, defaults.listing_rate_limit),
        trusted_proxies=get("TRUSTED_PROXIES", parse_networks, defaults.trusted_proxies),
        forwarded_header=get("FORWARDED_HEADER", _forwarded_header, defaults.forwarded_header),
        ipv6_prefix=get("IPV6_PREFIX", _ipv6_prefix, defaults.ipv6_prefix),
        database_timeout=get("DATABASE_TIMEOUT", _positive_seconds, defaults.database_timeout),
        lease_seconds=get("LEASE_SECONDS", _positive_seconds, defaults.lease_seconds),
        slots=get("SLOTS", _non_negative_int, defaults.slots),
        metrics_public=get("METRICS_PUBLIC", _boolean, defaults.metrics_public),
        max_queue=get("MAX_QUEUE", _positive_int, defaults.max_queue),
        max_queued_per_identity=get(
            "MAX_QUEUED_PER_IDENTITY", _positive_int, defaults.max_queued_per_identity
        ),
        auto_migrate=get("AUTO_MIGRATE", _boolean, defaults.auto_migrate),
        redis_url=get("REDIS_URL", _redis_url, defaults.redis_url),
        rate_limit_fallback=get("RATE_LIMIT_FALLBACK", _fallback, defaults.rate_limit_fallback),
        max_header_bytes=get("MAX_HEADER_BYTES", _header_bytes, defaults.max_header_bytes),
        header_timeout=get("HEADER_TIMEOUT", _positive_seconds, defaults.header_timeout),
        body_timeout=get("BODY_TIMEOUT", _positive_seconds, defaults.body_timeout),
        keepalive_timeout=get("KEEPALIVE_TIMEOUT", _positive_seconds, defaults.keepalive_timeout),
        max_connections=get("MAX_CONNECTIONS", _positive_int, defaults.max_connections),
        shutdown_timeout=get("SHUTDOWN_TIMEOUT", _non_negative_seconds, defaults.shutdown_timeout),
        console_secret=get("CONSOLE_SECRET", _console_secret, defaults.console_secret),
        console_session_hours=get("CONSOLE_SESSION_HOURS", _session_hours, defaults.console_session_hours),
        usage_flush_seconds=get("USAGE_FLUSH_SECONDS", _flush_seconds, defaults.usage_flush_seconds),
    )
