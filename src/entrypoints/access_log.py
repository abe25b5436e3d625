"""One access line per request, with the client address the gateway decided on.

uvicorn's own access log shows the TCP peer (or, with its proxy headers on, whatever a client wrote in
`X-Forwarded-For`); this one shows the address the gateway's trusted-proxy rule gave, who the caller was,
and the request's id. Never a key: the line holds the path (no query string), never a header.

In the text format the line is `203.0.113.7 "POST /chat HTTP/1.1" 200 3.1ms user=alice tier=member
request_id=3f9c0a7b12de-42`; in the JSON format (log_setup) the same record also carries every field of
`access_fields` as a key of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from litestar.types import Scope

from ollama_gate.domain.identity import Caller
from ollama_gate.domain.usage_query import MAX_MODEL_LENGTH
from ollama_gate.services.gatekeeper import Ticket

log = logging.getLogger("ollama_gate.access")

ACCESS_FIELDS = "access"  # the LogRecord attribute holding the fields


def access_fields(scope: Scope, status: int, seconds: float, client_ip: str) -> dict[str, Any]:
    """What an access line says. The request's state holds what the handlers learnt: the caller (once
    identified), the model it asked for and its ticket (once admitted, for the plan and the queue time)."""
    state: dict[str, Any] = scope.get("state", {})
    caller = state.get("caller")
    ticket = state.get("ticket")
    model = state.get("model")
    if not isinstance(caller, Caller):
        caller = None
    plan = ticket.plan.name if isinstance(ticket, Ticket) else caller.plan if caller is not None else None
    return {
        "method": scope.get("method", "-"),
        "path": scope.get("path", "-"),
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "client_ip": client_ip,
        "user": caller.user if caller is not None else None,
        "tier": caller.tier.value if caller is not None else None,
        "plan": plan or None,
        # The model a body named: the client's text, bounded as the usage row bounds it.
        "model": model[:MAX_MODEL_LENGTH] if isinstance(model, str) else None,
        "queue_ms": ticket.queue_ms if isinstance(ticket, Ticket) else None,
        "request_id": state.get("request_id"),
    }


def _printable(text: str) -> str:
    # ASGI paths are percent-decoded: `%0A` would otherwise start a forged line in a text log.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def access_line(fields: dict[str, Any], http_version: str = "1.1") -> str:
    """`203.0.113.7 "POST /chat HTTP/1.1" 200 3.1ms user=alice tier=member request_id=...`."""
    who = f" user={fields['user']} tier={fields['tier']}" if fields["user"] is not None else ""
    request_line = f"{fields['method']} {_printable(fields['path'])} HTTP/{http_version}"
    request_id = f" request_id={fields['request_id']}" if fields["request_id"] else ""
    return (
        f'{fields["client_ip"]} "{request_line}" {fields["status"]} {fields["duration_ms"]:.1f}ms'
        f"{who}{request_id}"
    )


class AccessLog:
    """Writes one access record per request (installed only when access lines are wanted)."""

    __slots__ = ("_client_ip",)

    def __init__(self, client_ip: Callable[[Scope], str]) -> None:
        self._client_ip = client_ip

    def write(self, scope: Scope, status: int, seconds: float) -> None:
        fields = access_fields(scope, status, seconds, self._client_ip(scope))
        line = access_line(fields, scope.get("http_version", "1.1"))
        log.info(line, extra={ACCESS_FIELDS: fields})
