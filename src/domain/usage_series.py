"""Requests and tokens per minute over a recent range, as the console's charts draw them: pure shaping.

A store counts rows per bucket (whole multiples of the bucket's length since the epoch, UTC); here the
buckets of the range are laid out in order, the empty ones as zeros, and the counts turned into rates
per minute, so an hour (one-minute buckets) and a day (five-minute buckets) read on the same scale.
"""

from __future__ import annotations

import math
from enum import StrEnum

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.immutable import immutable


@immutable
class BucketCount:
    """The rows of one bucket: `bucket` is its start in seconds since the epoch divided by its length."""

    bucket: int
    requests: int
    tokens: int


@immutable
class UserTotals:
    """One user's requests, tokens (prompt + completion) and upstream errors over a range."""

    user: str
    requests: int
    tokens: int
    errors: int


def regroup(counts: list[BucketCount], from_seconds: int, to_seconds: int) -> list[BucketCount]:
    """Counts of `from_seconds` buckets summed into buckets of `to_seconds` (a multiple of it)."""
    if to_seconds % from_seconds:
        raise ValueError(f"{to_seconds} s buckets cannot be made of {from_seconds} s ones")
    factor = to_seconds // from_seconds
    merged: dict[int, list[int]] = {}
    for count in counts:
        totals = merged.setdefault(count.bucket // factor, [0, 0])
        totals[0] += count.requests
        totals[1] += count.tokens
    return [BucketCount(bucket, requests, tokens) for bucket, (requests, tokens) in sorted(merged.items())]


class SeriesRange(StrEnum):
    HOUR = "hour"
    DAY = "day"

    @property
    def seconds(self) -> int:
        return 3600 if self is SeriesRange.HOUR else 86_400

    @property
    def bucket_seconds(self) -> int:
        return 60 if self is SeriesRange.HOUR else 300


def parse_range(text: str | None) -> SeriesRange:
    if text is None:
        return SeriesRange.HOUR
    try:
        return SeriesRange(text.strip())
    except ValueError:
        raise InvalidRequest("range must be hour or day") from None


@immutable
class SeriesWindow:
    """The buckets a chart shows: `count` of `bucket_seconds`, the last one holding `now`."""

    first_bucket: int
    count: int
    bucket_seconds: int

    @classmethod
    def ending_at(cls, now: float, span: SeriesRange) -> SeriesWindow:
        size = span.bucket_seconds
        count = span.seconds // size
        last = math.floor(now / size)
        return cls(last - count + 1, count, size)

    @property
    def since(self) -> float:
        return float(self.first_bucket * self.bucket_seconds)

    @property
    def until(self) -> float:
        return float((self.first_bucket + self.count) * self.bucket_seconds)


@immutable
class Series:
    """Aligned columns, as uPlot takes them: bucket starts (seconds), requests and tokens per minute."""

    times: list[int]
    requests_per_minute: list[float]
    tokens_per_minute: list[float]

    @property
    def total_requests(self) -> int:
        minutes = self._minutes
        return round(sum(self.requests_per_minute) * minutes)

    @property
    def total_tokens(self) -> int:
        return round(sum(self.tokens_per_minute) * self._minutes)

    @property
    def _minutes(self) -> float:
        if len(self.times) < 2:
            return 1.0
        return (self.times[1] - self.times[0]) / 60


def shape_series(counts: list[BucketCount], window: SeriesWindow) -> Series:
    """Every bucket of `window` in order (counts outside it are ignored, missing ones are zero), as rates
    per minute."""
    per_minute = 60 / window.bucket_seconds
    requests = [0.0] * window.count
    tokens = [0.0] * window.count
    for count in counts:
        index = count.bucket - window.first_bucket
        if 0 <= index < window.count:
            requests[index] += count.requests * per_minute
            tokens[index] += count.tokens * per_minute
    times = [(window.first_bucket + i) * window.bucket_seconds for i in range(window.count)]
    return Series(times, requests, tokens)
