"""Request ids: the client's `X-Request-ID` when it is a sane one, else one made here.

A sane id is 1-128 visible ASCII characters (no spaces, no control characters): it goes into log lines,
usage rows and CSV exports as it is, so it must not be able to break a line or pose as another field of a
text log line. Anything else (too long, empty, a space, a byte beyond ASCII) is replaced, not refused.

Made ids are a random prefix per process and a counter, `3f9c0a7b12de-42`: unique across the workers and
restarts of a gateway, and two string operations on the hot path.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterable

HEADER = b"x-request-id"
MAX_LENGTH = 128
_SANE = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_LENGTH)


def sane_request_id(value: bytes) -> bool:
    return _SANE.fullmatch(value) is not None


class RequestIds:
    """Makes and keeps request ids for one process."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = (prefix if prefix is not None else secrets.token_hex(6)) + "-"
        self._counter = itertools.count(1)

    def make(self) -> str:
        return self._prefix + str(next(self._counter))

    def of(self, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The id of a request with these ASGI headers (names are lower case): the first X-Request-ID
        if it is sane, else a new one."""
        for name, value in headers:
            if name == HEADER:
                if _SANE.fullmatch(value) is not None:
                    return value.decode("ascii")
                break
        return self.make()
