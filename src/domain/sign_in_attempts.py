"""Failed sign-ins per client address: after a few, the console refuses to check more for a while.

A key is too long to guess, but an admin token is whatever the owner chose; the console's sign-in form is
the one place that takes either from anyone, so it bounds how fast an address may try.
"""

from __future__ import annotations

from collections import deque

from ollama_gate.domain.errors import GatewayError

DEFAULT_FAILURES = 10
DEFAULT_WINDOW_SECONDS = 300.0
# Addresses remembered at most: beyond it the longest-remembered one is forgotten first, so a flood of
# addresses costs bounded memory (and each of them still gets only `failures` tries per window).
DEFAULT_ADDRESSES = 10_000


class TooManySignIns(GatewayError):
    """This address failed to sign in too often lately (429)."""

    status = 429
    retry_after: float

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed sign-ins from this address; try again in {int(retry_after) + 1} s")
        self.retry_after = retry_after


class FailedSignIns:
    """At most `failures` failed sign-ins per address in any `window` seconds; time is an argument."""

    __slots__ = ("_addresses", "_failures", "_seen", "_window")

    def __init__(
        self,
        failures: int = DEFAULT_FAILURES,
        window: float = DEFAULT_WINDOW_SECONDS,
        addresses: int = DEFAULT_ADDRESSES,
    ) -> None:
        self._failures = failures
        self._window = window
        self._addresses = addresses
        self._seen: dict[str, deque[float]] = {}

    def check(self, address: str, now: float) -> None:
        """Raises TooManySignIns while `address` has used up its failures."""
        times = self._seen.get(address)
        if times is None:
            return
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._seen[address]
        elif len(times) >= self._failures:
            # The window less the time since the oldest failure: `oldest + window - now` can round to
            # just above the window when the oldest failure is now (hypothesis found 60.00000000000001).
            raise TooManySignIns(self._window - (now - times[0]))

    def failed(self, address: str, now: float) -> None:
        times = self._seen.pop(address, None) or deque()
        times.append(now)
        self._seen[address] = times  # re-inserted: the dict's order is the order of last failure
        while len(self._seen) > self._addresses:
            del self._seen[next(iter(self._seen))]

    def succeeded(self, address: str) -> None:
        self._seen.pop(address, None)

    def __len__(self) -> int:
        return len(self._seen)
