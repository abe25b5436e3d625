"""The shared limiter: the arithmetic of domain/quota.py in Redis, one Lua script per decision.

Redis's own clock (TIME) stamps everything, so instances with skewed clocks still share one window.
Per identity: a sorted set of admissions, one of charged tokens with their running total (and the same
for the daily window), one of concurrency leases scored by their expiry. Every key expires on its own.

A lease lives `lease_ttl` seconds unless its holder renews it (every third of that): an instance that
dies mid-request frees its concurrency slots within `lease_ttl` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import uuid
from typing import Any

import redis.asyncio as aioredis

from ollama_gate.adapters.redis_writes import REDIS_DOWN, RENEW_LEASE, PipelinedWrites
from ollama_gate.domain.errors import LimiterUnavailable
from ollama_gate.domain.plans import Window
from ollama_gate.domain.quota import Admission, LimitKind, Limits, LimitState
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.quota import QuotaLimiter
from ollama_gate.services.background import BackgroundTask

log = logging.getLogger(__name__)

NONE = -1  # an absent limit, in the scripts' arguments
_CODES = {1: LimitKind.REQUESTS, 2: LimitKind.TOKENS, 3: LimitKind.DAILY_TOKENS, 4: LimitKind.CONCURRENCY}

_COMMON = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function ms(us) return math.ceil(us / 1000) end
local function amount_of(member) return tonumber(string.match(member, ':(%d+)$')) or 0 end
-- Tokens charged in (now - window, now]: older charges are trimmed, the running total kept in skey
-- (counted again from the set if it was lost).
local function charged(zkey, skey, window)
  local horizon = now - window
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', horizon)
  local total = tonumber(redis.call('GET', skey) or '-1')
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', horizon)
    if total >= 0 then for _, m in ipairs(gone) do total = total - amount_of(m) end end
  end
  if total < 0 then
    total = 0
    for _, m in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do total = total + amount_of(m) end
  end
  if redis.call('ZCARD', zkey) == 0 then
    redis.call('DEL', skey)
    return 0
  end
  redis.call('SET', skey, total, 'PX', ms(window))
  return total
end
local function oldest_leaves(zkey, window)
  local oldest = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if oldest[2] then return math.max(0, tonumber(oldest[2]) + window - now) end
  return 0
end
local function room_after(zkey, total, limit, window)
  if total < limit then return 0 end
  local entries = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    total = total - amount_of(entries[i])
    if total < limit then return math.max(0, tonumber(entries[i + 1]) + window - now) end
  end
  return 0
end
"""

# KEYS: admissions, tokens, tokens total, daily, daily total, leases, the plan's active identities.
# ARGV: requests N, W (us), tokens N, W, daily N, W, concurrency N, lease ttl (us), admission mark,
#       lease id, identity, 1 to admit (0: only look).
# Returns {refused code (0 admitted), retry (us), then remaining and reset (us) per limit, in order}.
_ADMIT = (
    _COMMON
    + """
local rl, rw = tonumber(ARGV[1]), tonumber(ARGV[2])
local tl, tw = tonumber(ARGV[3]), tonumber(ARGV[4])
local dl, dw = tonumber(ARGV[5]), tonumber(ARGV[6])
local cl, ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local admit = ARGV[12] == '1'
local requests, tokens, daily, leases = 0, 0, 0, 0
if rl >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - rw)
  requests = redis.call('ZCARD', KEYS[1])
end
if tl >= 0 then tokens = charged(KEYS[2], KEYS[3], tw) end
if dl >= 0 then daily = charged(KEYS[4], KEYS[5], dw) end
if cl >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  leases = redis.call('ZCARD', KEYS[6])
end
local refused, retry = 0, 0
local function refuse(code, wait)
  if refused == 0 then refused = code end
  if wait > retry then retry = wait end
end
if rl >= 0 and requests >= rl then refuse(1, oldest_leaves(KEYS[1], rw)) end
if tl >= 0 and tokens >= tl then refuse(2, room_after(KEYS[2], tokens, tl, tw)) end
if dl >= 0 and daily >= dl then refuse(3, room_after(KEYS[4], daily, dl, dw)) end
if cl >= 0 and leases >= cl then refuse(4, 1000000) end
if refused == 0 and admit then
  if rl >= 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[9])
    redis.call('PEXPIRE', KEYS[1], ms(rw))
    redis.call('ZADD', KEYS[7], now, ARGV[11])
    redis.call('PEXPIRE', KEYS[7], ms(rw))
    requests = requests + 1
  end
  if cl >= 0 then
    redis.call('ZADD', KEYS[6], now + ttl, ARGV[10])
    redis.call('PEXPIRE', KEYS[6], ms(ttl))
    leases = leases + 1
  end
end
local tokens_reset, daily_reset = 0, 0
if tl >= 0 then
  if tokens >= tl then tokens_reset = room_after(KEYS[2], tokens, tl, tw) else tokens_reset = oldest_leaves(KEYS[2], tw) end
end
if dl >= 0 then
  if daily >= dl then daily_reset = room_after(KEYS[4], daily, dl, dw) else daily_reset = oldest_leaves(KEYS[4], dw) end
end
local requests_reset = 0
if rl >= 0 then requests_reset = oldest_leaves(KEYS[1], rw) end
return {refused, retry, rl - requests, requests_reset, tl - tokens, tokens_reset, dl - daily, daily_reset,
        cl - leases}
"""
)

# KEYS: tokens, tokens total, daily, daily total, leases. ARGV: tokens used, mark, lease ('' none),
# tokens W (us, -1 none), daily W.
_FINISH = (
    _COMMON
    + """
local used = tonumber(ARGV[1])
local function add(zkey, skey, window)
  if window < 0 or used <= 0 then return end
  charged(zkey, skey, window)
  redis.call('ZADD', zkey, now, ARGV[2] .. ':' .. used)
  redis.call('INCRBY', skey, used)
  redis.call('PEXPIRE', zkey, ms(window))
  redis.call('PEXPIRE', skey, ms(window))
end
add(KEYS[1], KEYS[2], tonumber(ARGV[4]))
add(KEYS[3], KEYS[4], tonumber(ARGV[5]))
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[5], ARGV[3]) end
return 1
"""
)

# KEYS: admissions, leases. ARGV: mark, lease ('' none).
_REFUND = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: the plan's active identities. ARGV: window (us).
_ACTIVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _window_args(window: Window | None) -> list[int]:
    return [NONE, NONE] if window is None else [window.limit, _us(window.seconds)]


class RedisQuotaLimiter:
    """Exact limits shared by every instance using the same Redis.

    When Redis is unreachable, `fallback` (the in-process limiter) decides, or with no fallback the
    request is refused with LimiterUnavailable (503), never silently unlimited. Redis is retried at most
    every `retry_interval` seconds while it is down, so an outage does not add a timeout to every
    request, and the limiter recovers by itself. The ends of requests (charges, leases given back) are
    sent in the background, in pipelines; lost during an outage, leases expire on their own.
    """

    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        clock: Clock,
        fallback: QuotaLimiter | None,
        prefix: str = "ollama-gate",
        retry_interval: float = 1.0,
        lease_ttl: float = 10.0,
        writes: PipelinedWrites | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self._fallback = fallback
        self._prefix = prefix
        self._retry_interval = retry_interval
        self.lease_ttl = lease_ttl
        self._admit: Any = client.register_script(_ADMIT)
        self._finish: Any = client.register_script(_FINISH)
        self._refund: Any = client.register_script(_REFUND)
        self._renew: Any = client.register_script(RENEW_LEASE)
        self._active: Any = client.register_script(_ACTIVE)
        self._ids = itertools.count()
        self._instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._live_leases: dict[str, str] = {}  # lease -> its key, renewed while the request runs
        # Decisions and the ends of requests (charges, leases given back; lost during an outage, leases
        # expire), in the pipeline `writes` shares with the GPU slots' scripts (closed by its owner).
        self._owns_writes = writes is None
        self._ends = writes if writes is not None else PipelinedWrites(client, "request ends")
        self._renewer = BackgroundTask("quota-leases", self._renew_leases)

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    def _key(self, identity: str, part: str) -> str:
        return f"{self._prefix}:q:{identity}:{part}"

    def _admit_keys(self, identity: str, limits: Limits) -> list[str]:
        return [
            *(self._key(identity, part) for part in ("r", "t", "ts", "d", "ds", "c")),
            f"{self._prefix}:active:{limits.plan}",
        ]

    def _args(self, identity: str, limits: Limits, mark: str, lease: str, admit: bool) -> list[Any]:
        return [
            *_window_args(limits.requests),
            *_window_args(limits.tokens),
            *_window_args(limits.daily),
            NONE if limits.concurrency is None else limits.concurrency,
            _us(self.lease_ttl),
            mark,
            lease,
            identity,
            1 if admit else 0,
        ]

    async def admit(self, identity: str, limits: Limits) -> Admission:
        if self._down_since is not None and self._clock.monotonic() < self._retry_at:
            return await self._degraded_admit(identity, limits)
        number = next(self._ids)
        mark, lease = f"{self._instance}-{number}", f"{self._instance}-l{number}"
        # Pipelined with the other requests' decisions and ends (one pipeline in flight: under load a
        # round trip carries many), answered after this process's earlier ends.
        call = self._ends.submit(
            self._admit, self._admit_keys(identity, limits), self._args(identity, limits, mark, lease, True)
        )
        try:
            answer = await asyncio.shield(call)
        except REDIS_DOWN as error:
            self._mark_down(error)
            return await self._degraded_admit(identity, limits)
        except asyncio.CancelledError:
            # The request went away while asking: what Redis recorded for it is given back.
            call.add_done_callback(lambda done: self._undo(done, identity, limits, mark, lease))
            raise
        self._mark_up()
        return self._admission(identity, limits, answer, mark, lease)

    def _admission(self, identity: str, limits: Limits, answer: Any, mark: str, lease: str) -> Admission:
        states = _states(limits, answer)
        refused = int(answer[0])
        if refused:
            return Admission(
                False, limits, states, _CODES[refused], int(answer[1]) / 1_000_000, via=self.backend
            )
        taken = lease if limits.concurrency is not None else None
        if taken is not None:
            self._live_leases[taken] = self._key(identity, "c")
        return Admission(True, limits, states, mark=mark, lease=taken, via=self.backend)

    def _undo(self, call: asyncio.Future[Any], identity: str, limits: Limits, mark: str, lease: str) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        admission = self._admission(identity, limits, call.result(), mark, lease)
        if admission.admitted:
            self.refund(identity, admission)

    async def _degraded_admit(self, identity: str, limits: Limits) -> Admission:
        if self._fallback is None:
            raise LimiterUnavailable("rate limiter unavailable (Redis is down); try again shortly")
        return await self._fallback.admit(identity, limits)

    def finish(self, identity: str, admission: Admission, tokens: int) -> None:
        if admission.via != self.backend:
            if self._fallback is not None:
                self._fallback.finish(identity, admission, tokens)
            return
        lease = admission.lease or ""
        self._live_leases.pop(lease, None)
        limits = admission.limits
        if lease or (tokens > 0 and (limits.tokens or limits.daily)):
            keys = [self._key(identity, part) for part in ("t", "ts", "d", "ds", "c")]
            windows = [_us(w.seconds) if w else NONE for w in (limits.tokens, limits.daily)]
            self._queue(self._finish, keys, [max(0, tokens), admission.mark, lease, *windows])

    def refund(self, identity: str, admission: Admission) -> None:
        if admission.via != self.backend:
            if self._fallback is not None:
                self._fallback.refund(identity, admission)
            return
        lease = admission.lease or ""
        self._live_leases.pop(lease, None)
        self._queue(
            self._refund, [self._key(identity, "r"), self._key(identity, "c")], [admission.mark, lease]
        )

    def _queue(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self._ends.queue(script, keys, args)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            leases = list(self._live_leases.items())
            if not leases:
                continue
            for lease, key in leases:
                self._queue(self._renew, [key], [lease, _us(self.lease_ttl)])

    async def states(self, identity: str, limits: Limits) -> tuple[LimitState, ...]:
        if self._down_since is None:
            try:
                answer = await self._admit(
                    keys=self._admit_keys(identity, limits), args=self._args(identity, limits, "", "", False)
                )
                return _states(limits, answer)
            except REDIS_DOWN as error:
                self._mark_down(error)
        return await self._fallback.states(identity, limits) if self._fallback is not None else ()

    async def active_identities(self, limits: Limits) -> int:
        if self._down_since is None and limits.requests is not None:
            try:
                count = await self._active(
                    keys=[f"{self._prefix}:active:{limits.plan}"], args=[_us(limits.requests.seconds)]
                )
                return int(count)
            except REDIS_DOWN as error:
                self._mark_down(error)
        return await self._fallback.active_identities(limits) if self._fallback is not None else 0

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
                "Redis reachable again after %.1fs: shared limits restored",
                self._clock.monotonic() - self._down_since,
            )
            self._down_since = None

    async def start(self) -> None:
        self._ends.start()
        self._renewer.start()

    async def close(self) -> None:
        await self._renewer.stop()
        if self._owns_writes:
            await self._ends.close()  # the last ends go out before the connection closes


def _states(limits: Limits, answer: list[Any]) -> tuple[LimitState, ...]:
    """The script's per-limit numbers as LimitStates (only for the limits the plan has)."""
    values = [int(v) for v in answer]
    states = []
    for kind, window, remaining, reset in (
        (LimitKind.REQUESTS, limits.requests, values[2], values[3]),
        (LimitKind.TOKENS, limits.tokens, values[4], values[5]),
        (LimitKind.DAILY_TOKENS, limits.daily, values[6], values[7]),
    ):
        if window is not None:
            states.append(
                LimitState(kind, window.limit, window.seconds, max(0, remaining), reset / 1_000_000)
            )
    if limits.concurrency is not None:
        remaining = max(0, values[8])
        states.append(
            LimitState(LimitKind.CONCURRENCY, limits.concurrency, None, remaining, 0.0 if remaining else 1.0)
        )
    return tuple(states)
