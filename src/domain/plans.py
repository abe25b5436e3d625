"""Plans: named policies for sharing the GPU (requests, tokens, concurrency, models, ceilings, priority).

Every field is optional; None means no limit. A plan is validated as a whole when it is made, so the rest
of the gateway never meets an invalid one. Time and JSON come in as values: nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Mapping
from typing import Any

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.identity import ADMIN_USER, ANONYMOUS_USER
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.model_names import model_key

ANONYMOUS_PLAN = ANONYMOUS_USER
MEMBER_PLAN = "member"
ADMIN_PLAN = ADMIN_USER
BUILTIN_PLANS = (ANONYMOUS_PLAN, MEMBER_PLAN, ADMIN_PLAN)
# The scheduler's defaults for a plan that leaves them unset.
DEFAULT_PRIORITY = {ANONYMOUS_PLAN: 0, MEMBER_PLAN: 1, ADMIN_PLAN: 2}
DEFAULT_WEIGHT = 1.0
DEFAULT_QUEUE_TIMEOUT = 60.0
DAY_SECONDS = 86_400.0

_WINDOW = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*")
PLAN_NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_PLAN_NAME = re.compile(PLAN_NAME_PATTERN)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_PRIORITY = 1000
MAX_COUNT = 2**53  # plain integers in JSON, SQL and Lua alike


@immutable
class Window:
    """At most `limit` (requests, tokens) in any `seconds`."""

    limit: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Window:
        """`N/W` such as `30/60`; raises ValueError on anything else."""
        match = _WINDOW.fullmatch(text)
        if match is None:
            raise ValueError(f"expected N/W such as 30/60, got {text!r}")
        limit, seconds = int(match.group(1)), float(match.group(2))
        if not 1 <= limit <= MAX_COUNT or not 0 < seconds <= 366 * DAY_SECONDS:
            raise ValueError(f"N and W must be positive, got {text!r}")
        return cls(limit, seconds)

    @property
    def text(self) -> str:
        return f"{self.limit}/{self.seconds:g}"


@immutable
class Plan:
    name: str
    requests: Window | None = None
    tokens: Window | None = None
    daily_tokens: int | None = None
    concurrency: int | None = None
    models: tuple[str, ...] | None = None
    max_context: int | None = None
    max_output: int | None = None
    max_keep_alive: float | None = None
    priority: int | None = None
    weight: float | None = None
    queue_timeout: float | None = None

    @property
    def has_ceilings(self) -> bool:
        return (self.max_context, self.max_output, self.max_keep_alive) != (None, None, None)

    @property
    def charges_tokens(self) -> bool:
        return self.tokens is not None or self.daily_tokens is not None

    @property
    def daily_window(self) -> Window | None:
        return None if self.daily_tokens is None else Window(self.daily_tokens, DAY_SECONDS)

    @property
    def effective_priority(self) -> int:
        return self.priority if self.priority is not None else DEFAULT_PRIORITY.get(self.name, 1)

    @property
    def effective_weight(self) -> float:
        return self.weight if self.weight is not None else DEFAULT_WEIGHT

    @property
    def effective_queue_timeout(self) -> float:
        return self.queue_timeout if self.queue_timeout is not None else DEFAULT_QUEUE_TIMEOUT

    def allows_model(self, model: str | None) -> bool:
        """Whether `model` may be used on this plan (any model when the plan lists none)."""
        if self.models is None:
            return True
        if model is None:
            return False
        key = model_key(model)
        return any(fnmatch.fnmatchcase(key, _pattern_key(pattern)) for pattern in self.models)

    def fields(self) -> dict[str, Any]:
        """The plan as the API shows it: every field, None where unlimited."""
        return {
            "name": self.name,
            "requests": self.requests.text if self.requests else None,
            "tokens": self.tokens.text if self.tokens else None,
            "daily_tokens": self.daily_tokens,
            "concurrency": self.concurrency,
            "models": list(self.models) if self.models is not None else None,
            "max_context": self.max_context,
            "max_output": self.max_output,
            "max_keep_alive": self.max_keep_alive,
            "priority": self.priority,
            "weight": self.weight,
            "queue_timeout": self.queue_timeout,
        }


def _pattern_key(pattern: str) -> str:
    """A model glob in the form names are matched in: `smollm` means `smollm:latest`, as Ollama reads it;
    a glob in the last part (`hf.co/org/*`) already covers every tag."""
    last = pattern.rpartition("/")[2]
    return pattern.strip().lower() if any(c in last for c in "*?[") else model_key(pattern)


FIELD_NAMES = tuple(field.name for field in dataclasses.fields(Plan) if field.name != "name")


def validate_plan_name(name: str) -> str:
    if _PLAN_NAME.fullmatch(name) is None:
        raise InvalidRequest("plan name must be 1-64 characters: letters, digits, '_', '.', '-'")
    return name


def parse_duration(value: Any) -> float | None:
    """Seconds from what Ollama takes as a duration: a number of seconds, or a Go duration string
    (`"5m"`, `"1h30m"`, `"-1"`, `"0"`); negative means forever (returned as -inf). None when it is neither
    (Ollama then answers the request with its own 400)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return -math.inf if value < 0 else float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    sign, text = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    if text in ("0", ""):
        return 0.0 if text == "0" else None
    if sign < 0 and re.fullmatch(r"\d+(?:\.\d+)?", text):
        return -math.inf  # "-1": Ollama's documented spelling of forever
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        return None
    return -math.inf if sign < 0 and seconds > 0 else seconds


# -- building plans from what an admin sends --------------------------------------------------------


def _integer(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_COUNT:
        raise InvalidRequest(f"{name}: expected an integer of at least {minimum}")
    return value


def _number(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{name}: expected a number")
    if value < 0 or (positive and value == 0) or value > 366 * DAY_SECONDS:
        raise InvalidRequest(f"{name}: expected a {'positive' if positive else 'non-negative'} number")
    return float(value)


def _window(name: str, value: Any) -> Window:
    if not isinstance(value, str):
        raise InvalidRequest(f'{name}: expected "N/W" such as "30/60"')
    try:
        return Window.parse(value)
    except ValueError as error:
        raise InvalidRequest(f"{name}: {error}") from None


def _models(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise InvalidRequest('models: expected a list of model names or globs such as "llama3.2:*"')
    if len(value) > 1000 or any(len(item) > 256 for item in value):
        raise InvalidRequest("models: at most 1000 names of at most 256 characters")
    return tuple(item.strip() for item in value)


def _keep_alive(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds is None or seconds < 0 or seconds > 366 * DAY_SECONDS:
        raise InvalidRequest('max_keep_alive: expected a duration such as "5m" or a number of seconds')
    return seconds


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidRequest(f"priority: expected an integer between {-MAX_PRIORITY} and {MAX_PRIORITY}")
    return value


_PARSERS: dict[str, Any] = {
    "requests": lambda v: _window("requests", v),
    "tokens": lambda v: _window("tokens", v),
    "daily_tokens": lambda v: _integer("daily_tokens", v),
    "concurrency": lambda v: _integer("concurrency", v),
    "models": _models,
    "max_context": lambda v: _integer("max_context", v),
    "max_output": lambda v: _integer("max_output", v),
    "max_keep_alive": _keep_alive,
    "priority": _priority,
    "weight": lambda v: _number("weight", v, positive=True),
    "queue_timeout": lambda v: _number("queue_timeout", v, positive=False),
}


def parse_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The plan fields in `fields`, validated; InvalidRequest names the first wrong one. JSON null is
    None (no limit); unknown names are refused, so a typo is not silently a plan without that limit."""
    unknown = sorted(set(fields) - set(FIELD_NAMES) - {"name"})
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: not a plan field (fields: {', '.join(FIELD_NAMES)})")
    return {
        name: None if value is None else _PARSERS[name](value)
        for name, value in fields.items()
        if name != "name"
    }


def plan_from_fields(name: str, fields: Mapping[str, Any]) -> Plan:
    """A whole plan (PUT): the fields given, None for the rest."""
    return Plan(validate_plan_name(name), **parse_fields(fields))


def plan_with_changes(plan: Plan, fields: Mapping[str, Any]) -> Plan:
    """`plan` with the fields given changed (PATCH)."""
    return dataclasses.replace(plan, **parse_fields(fields))


def plan_in_use(name: str, users: int, keys: int) -> str:
    """Why a plan cannot be deleted yet."""
    holders = [
        f"{count} {noun}{'s' if count != 1 else ''}"
        for count, noun in ((users, "user"), (keys, "key"))
        if count
    ]
    return f"plan '{name}' is in use by {' and '.join(holders)}: move them to another plan first"


def builtin_plans(anonymous_requests: Window, member_requests: Window) -> dict[str, Plan]:
    """The plans in force when nothing is stored: exactly the seed's contract (N requests per W seconds
    for anonymous callers and for members, nothing else; the admin unlimited)."""
    return {
        ANONYMOUS_PLAN: Plan(ANONYMOUS_PLAN, requests=anonymous_requests, priority=0),
        MEMBER_PLAN: Plan(MEMBER_PLAN, requests=member_requests, priority=1),
        ADMIN_PLAN: Plan(ADMIN_PLAN, priority=2),
    }
