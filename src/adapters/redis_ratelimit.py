"""The shared rate limiter: the same exact sliding-window log in Redis, one Lua script per decision.

Redis's own clock (TIME) stamps every admission, so instances with skewed clocks still share one window.
Every key expires on its own one window after its last admission.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ollama_gate.domain.errors import LimiterUnavailable
from ollama_gate.domain.ratelimit import Decision, RateLimit
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.ratelimit import RateLimiter

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: the identity's log, the policy's set of active identities.
# ARGV: limit, window (microseconds), identity, a member id unique to this admission.
# Returns {admitted (0/1), remaining, microseconds until the oldest admission leaves the window}.
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local admitted = 0
if count < limit then
  admitted = 1
  count = count + 1
  local ttl = math.ceil(window / 1000)
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local reset = 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {admitted, limit - count, reset}
"""

# KEYS: the policy's set of active identities. ARGV: window (microseconds).
_ACTIVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""


class RedisRateLimiter:
    """Exact limits shared by every instance using the same Redis.

    When Redis is unreachable, `fallback` (the in-process limiter) decides, or with no fallback the
    request is refused with LimiterUnavailable (503) — never silently unlimited. Redis is retried at
    most every `retry_interval` seconds while it is down, so an outage does not add a timeout to every
    request, and the limiter recovers by itself.
    """

    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        clock: Clock,
        fallback: RateLimiter | None,
        prefix: str = "ollama-gate",
        retry_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._clock = clock
        self._fallback = fallback
        self._prefix = prefix
        self._retry_interval = retry_interval
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._active: Any = client.register_script(_ACTIVE)
        self._admission_ids = itertools.count()
        self._instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    def _keys(self, rate: RateLimit, identity: str) -> list[str]:
        policy = f"{self._prefix}:rl:{rate.name}:{rate.limit}/{rate.window_text}"
        return [f"{policy}:log:{identity}", f"{policy}:active"]

    async def acquire(self, identity: str, rate: RateLimit) -> Decision:
        if self._down_since is not None and self._clock.monotonic() < self._retry_at:
            return await self._degraded_acquire(identity, rate)
        member = f"{self._instance}-{next(self._admission_ids)}"
        try:
            admitted, remaining, reset_us = await self._acquire(
                keys=self._keys(rate, identity),
                args=[rate.limit, int(rate.window * 1_000_000), identity, member],
            )
        except REDIS_DOWN as error:
            self._mark_down(error)
            return await self._degraded_acquire(identity, rate)
        self._mark_up()
        return Decision(bool(admitted), rate, int(remaining), int(reset_us) / 1_000_000)

    async def active_identities(self, rate: RateLimit) -> int:
        if self._down_since is None:
            try:
                count = await self._active(
                    keys=[self._keys(rate, "")[1]], args=[int(rate.window * 1_000_000)]
                )
                return int(count)
            except REDIS_DOWN as error:
                self._mark_down(error)
        return await self._fallback.active_identities(rate) if self._fallback is not None else 0

    async def _degraded_acquire(self, identity: str, rate: RateLimit) -> Decision:
        if self._fallback is None:
            raise LimiterUnavailable("rate limiter unavailable (Redis is down); try again shortly")
        return await self._fallback.acquire(identity, rate)

    def _mark_down(self, error: BaseException) -> None:
        now = self._clock.monotonic()
        if self._down_since is None:
            self._down_since = now
            mode = "the in-process limiter decides" if self._fallback is not None else "requests are refused"
            log.warning("Redis unreachable (%s): %s until it is back", error.__class__.__name__, mode)
        self._retry_at = now + self._retry_interval

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "Redis reachable again after %.1fs: shared rate limits restored",
                self._clock.monotonic() - self._down_since,
            )
            self._down_since = None

    async def close(self) -> None:
        await self._client.aclose()

    async def start(self) -> None:
        return None
