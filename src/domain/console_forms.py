"""What the console's HTML forms send, turned into what the services take: pure, no I/O.

A form sends text only. An empty field is "no limit" (None); numbers are read here as the API's JSON
would carry them, so the plan's own validation (domain.plans) gives the same messages to both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.plans import FIELD_NAMES

_INTEGER_FIELDS = ("daily_tokens", "concurrency", "max_context", "max_output", "priority")
_NUMBER_FIELDS = ("weight", "queue_timeout")
_TEXT_FIELDS = ("requests", "tokens")


def _integer(name: str, text: str) -> int:
    stripped = text.strip()
    body = stripped.removeprefix("-")
    if not body.isascii() or not body.isdigit() or len(body) > 19:
        raise InvalidRequest(f"{name}: expected a whole number")
    return int(stripped)


def _number(name: str, text: str) -> float | int:
    stripped = text.strip()
    if len(stripped) > 32:
        raise InvalidRequest(f"{name}: expected a number")
    try:
        value = float(stripped)
    except ValueError:
        raise InvalidRequest(f"{name}: expected a number") from None
    return int(value) if value.is_integer() and "." not in stripped and "e" not in stripped.lower() else value


def plan_fields_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """Every plan field from a form: empty is None (no limit); `models` is a comma- or line-separated
    list; `max_keep_alive` a duration (`5m`) or seconds. Other form fields (the form token) are ignored."""
    fields: dict[str, Any] = {}
    for name in FIELD_NAMES:
        text = (form.get(name) or "").strip()
        if not text:
            fields[name] = None
        elif name in _INTEGER_FIELDS:
            fields[name] = _integer(name, text)
        elif name in _NUMBER_FIELDS:
            fields[name] = _number(name, text)
        elif name == "models":
            fields[name] = [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
        elif name == "max_keep_alive":
            try:
                fields[name] = _number(name, text)
            except InvalidRequest:
                fields[name] = text
        else:
            assert name in _TEXT_FIELDS, name
            fields[name] = text
    return fields


def plan_form_values(fields: Mapping[str, Any]) -> dict[str, str]:
    """A plan's fields (as `Plan.fields()` gives them) as the form shows them: the inverse of
    `plan_fields_from_form` for every valid plan."""
    values: dict[str, str] = {}
    for name in FIELD_NAMES:
        value = fields.get(name)
        if value is None:
            values[name] = ""
        elif name == "models":
            values[name] = ", ".join(value)
        elif isinstance(value, float):
            values[name] = str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
        else:
            values[name] = str(value)
    return values
