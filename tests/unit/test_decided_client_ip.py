"""decided_client_ip (entrypoints/request_context.py): the address the limits, usage rows and access log
use, the same each time a request asks; kept on the request only when proxies make it a decision."""

from __future__ import annotations

import ipaddress
from typing import Any

from ollama_gate.entrypoints.config import Settings
from ollama_gate.entrypoints.request_context import decided_client_ip


def scope_from(peer: str, forwarded_for: str | None = None) -> Any:
    headers = [(b"host", b"gate")]
    if forwarded_for is not None:
        headers.append((b"x-forwarded-for", forwarded_for.encode()))
    return {"type": "http", "client": (peer, 40000), "headers": headers, "state": {"request_id": "r"}}


def test_without_trusted_proxies_it_is_the_normalised_peer_and_nothing_is_kept() -> None:
    scope = scope_from("::ffff:10.0.0.1", forwarded_for="203.0.113.9")
    assert decided_client_ip(scope, Settings()) == "10.0.0.1"
    assert decided_client_ip(scope, Settings()) == "10.0.0.1"
    assert scope["state"] == {"request_id": "r"}


def test_behind_a_trusted_proxy_it_is_decided_once_and_kept() -> None:
    settings = Settings(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    scope = scope_from("10.0.0.1", forwarded_for="203.0.113.9")
    assert decided_client_ip(scope, settings) == "203.0.113.9"
    scope["headers"] = [(b"x-forwarded-for", b"198.51.100.7")]  # later reads see the first decision
    assert decided_client_ip(scope, settings) == "203.0.113.9"
    assert scope["state"]["client_ip"] == "203.0.113.9"


def test_a_scope_without_a_client_is_unknown() -> None:
    scope = scope_from("x")
    del scope["client"]
    assert decided_client_ip(scope, Settings()) == "unknown"
