"""The rate-limit policy: an exact sliding-window log. Time comes in as a number of seconds."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

_RATE_PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` admitted requests in any `window` seconds, for the policy called `name`."""

    name: str
    limit: int
    window: float

    @classmethod
    def parse(cls, name: str, text: str) -> RateLimit:
        """Parse `N/W` (e.g. `10/60`); raises ValueError on anything else."""
        match = _RATE_PATTERN.fullmatch(text)
        if match is None:
            raise ValueError(f"expected N/W such as 10/60, got {text!r}")
        limit, window = int(match.group(1)), float(match.group(2))
        if limit < 1 or window <= 0:
            raise ValueError(f"N and W must be positive, got {text!r}")
        return cls(name, limit, window)

    @property
    def window_text(self) -> str:
        return f"{self.window:g}"

    def describe(self) -> str:
        return f"{self.limit} req / {self.window_text}s"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request, with what the rate-limit headers need."""

    admitted: bool
    rate: RateLimit
    remaining: int
    # Seconds until the oldest admission leaves the window (a slot frees); 0 when the log is empty.
    reset_after: float

    @property
    def retry_after(self) -> float:
        return self.reset_after


def decide(log: deque[float], rate: RateLimit, now: float) -> Decision:
    """Admit iff fewer than `rate.limit` admissions lie in (now - window, now]; record admissions in `log`.

    `log` holds admission times in ascending order; this trims what left the window. A rejected request
    changes nothing, so it consumes no quota.
    """
    horizon = now - rate.window
    while log and log[0] <= horizon:
        log.popleft()
    admitted = len(log) < rate.limit
    if admitted:
        log.append(now)
    reset_after = log[0] + rate.window - now if log else 0.0
    return Decision(admitted, rate, rate.limit - len(log), reset_after)
