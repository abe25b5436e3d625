from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """Wall time for records and a monotonic time for windows and latencies."""

    def now(self) -> datetime:
        """The current UTC time, timezone-aware."""
        ...

    def time(self) -> float:
        """The current wall time as seconds since the epoch (what `now()` is, without a datetime)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...
