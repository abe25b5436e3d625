"""GPU slots shared by every gateway instance, in Redis.

Per upstream and model, a sorted set of leases scored by their expiry: a slot is free while fewer than
the upstream's slots leases are live. A holder renews its leases every third of `lease_ttl`; an instance
that dies stops renewing, and its slots free themselves within `lease_ttl` seconds.

Order across instances: each instance advertises its next in line per model (`heads`, renewed the same
way); a slot goes to a claim only when no other live instance advertises a claim that ranks before it
(higher priority, then less GPU time, then earlier arrival). Whoever gives a slot back publishes it, so
the instance whose claim ranks first takes it within a round trip; a periodic nudge covers a lost
message or an expired lease.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import redis.asyncio as aioredis

from ollama_gate.adapters.redis_writes import REDIS_DOWN, RENEW_LEASE, PipelinedWrites
from ollama_gate.ports.slots import Claim, SharedSlotsUnavailable
from ollama_gate.services.background import BackgroundTask

log = logging.getLogger(__name__)

_LEAST = -1e300  # "no GPU time at all" in a form Lua's tonumber reads

# KEYS: the model's heads, then one slot set per upstream.
# ARGV: instance, lease, priority, usage, arrived, lease ttl (us), then per upstream: name, slots (-1: no
#       limit), loaded (1/0). Returns the upstream taken, or false.
_TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local priority, usage, arrived = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local heads = redis.call('HGETALL', KEYS[1])
for i = 1, #heads, 2 do
  if heads[i] ~= ARGV[1] then
    local p, u, a, expires = string.match(heads[i + 1], '^(%S+) (%S+) (%S+) (%S+)$')
    p, u, a, expires = tonumber(p), tonumber(u), tonumber(a), tonumber(expires)
    if expires > now then
      if p > priority or (p == priority and (u < usage or (u == usage and a < arrived))) then
        return false
      end
    else
      redis.call('HDEL', KEYS[1], heads[i])
    end
  end
end
local best, best_key, best_rank = nil, nil, nil
for n = 1, #KEYS - 1 do
  local key = KEYS[n + 1]
  local base = 6 + (n - 1) * 3
  local name, slots, loaded = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local busy = redis.call('ZCARD', key)
  if slots < 0 or busy < slots then
    local rank = (1 - loaded) * 1000000000 + busy
    if best_rank == nil or rank < best_rank then best, best_key, best_rank = name, key, rank end
  end
end
if best == nil then return false end
local ttl = tonumber(ARGV[6])
redis.call('ZADD', best_key, now + ttl, ARGV[2])
redis.call('PEXPIRE', best_key, math.ceil(ttl / 1000))
return best
"""

# KEYS: the slot set, the model's heads. ARGV: lease, channel, model. Published only when some instance
# advertises a request waiting for the model: with nobody waiting, a request's end is no message at all.
_GIVE_BACK = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[2]) > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
"""

# KEYS: the model's heads. ARGV: instance, "priority usage arrived" or '' (none), ttl (us).
_ADVERTISE = """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) / 1000))
return 1
"""

# KEYS: slot sets. Returns the live leases of each.
_BUSY = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local counts = {}
for n = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[n], '-inf', now)
  counts[n] = redis.call('ZCARD', KEYS[n])
end
return counts
"""


def _rank(claim: Claim) -> str:
    usage = claim.usage if math.isfinite(claim.usage) else _LEAST
    return f"{claim.priority} {usage!r} {claim.arrived!r}"


class RedisSharedSlots:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "ollama-gate",
        lease_ttl: float = 10.0,
        nudge_interval: float = 0.5,
        retry_interval: float = 1.0,
        writes: PipelinedWrites | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.lease_ttl = lease_ttl
        self._nudge_interval = nudge_interval
        self._retry_interval = retry_interval
        self._down_until = 0.0  # while Redis is known to be down, decide locally without asking it
        self._instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._channel = f"{prefix}:slots-freed"
        self._take: Any = client.register_script(_TAKE)
        self._give_back: Any = client.register_script(_GIVE_BACK)
        self._renew: Any = client.register_script(RENEW_LEASE)
        self._advertise: Any = client.register_script(_ADVERTISE)
        self._busy: Any = client.register_script(_BUSY)
        self._live: dict[str, str] = {}  # lease -> slot set, renewed while its request runs
        self._heads: dict[str, str] = {}  # model -> our advertised rank
        # Slots taken and given back, leases renewed, heads advertised (a lost write repairs itself: expiry,
        # renewal), in the pipeline `writes` shares with the limiter's scripts (closed by its owner).
        self._owns_writes = writes is None
        self._writes = writes if writes is not None else PipelinedWrites(client, "slot updates")
        self._callbacks: list[Callable[[str], None]] = []
        self._models: set[str] = set()
        self._keeper = BackgroundTask("slot-leases", self._keep_forever)
        self._listener = BackgroundTask("slot-freed", self._listen_forever)

    def _slots_key(self, upstream: str, model: str) -> str:
        return f"{self._prefix}:slots:{upstream}:{model}"

    def _heads_key(self, model: str) -> str:
        return f"{self._prefix}:heads:{model}"

    def _lease(self, lease: str) -> str:
        return f"{self._instance}:{lease}"

    # -- SharedSlots --------------------------------------------------------------------------------

    def take(
        self, model: str, claim: Claim, upstreams: Sequence[tuple[str, int | None, bool]]
    ) -> asyncio.Future[str | None]:
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if not upstreams:
            answer.set_result(None)
            return answer
        if time.monotonic() < self._down_until:
            answer.set_exception(SharedSlotsUnavailable())
            return answer
        self._models.add(model)
        keys = [self._heads_key(model), *(self._slots_key(name, model) for name, _, _ in upstreams)]
        args: list[Any] = [
            self._instance,
            self._lease(claim.lease),
            *_rank(claim).split(),
            int(self.lease_ttl * 1e6),
        ]
        for name, slots, loaded in upstreams:
            args += [name, -1 if slots is None else slots, 1 if loaded else 0]
        # Behind this instance's queued writes: its own slots given back count as free here. Sent now,
        # so that a caller can ask for its admission in the same pipeline before it awaits either.
        call = self._writes.submit(self._take, keys, args)
        call.add_done_callback(partial(self._taken, answer, model, claim.lease))
        return answer

    def _taken(
        self, answer: asyncio.Future[str | None], model: str, lease: str, call: asyncio.Future[Any]
    ) -> None:
        if call.cancelled():
            answer.cancel()
            return
        error = call.exception()
        if error is not None:
            if isinstance(error, REDIS_DOWN):
                if not self._down_until:
                    log.warning(
                        "Redis unreachable (%s): each instance counts its own GPU slots until it is back",
                        error.__class__.__name__,
                    )
                self._down_until = time.monotonic() + self._retry_interval
                error = SharedSlotsUnavailable(str(error))
            if not answer.done():
                answer.set_exception(error)
            return
        if self._down_until:
            log.warning("Redis reachable again: GPU slots shared again")
            self._down_until = 0.0
        taken = call.result()
        upstream = (taken.decode() if isinstance(taken, bytes) else str(taken)) if taken else None
        if answer.done():
            # The request went away while asking (its await was cancelled): a slot taken for it goes
            # straight back.
            if upstream is not None:
                self.give_back(upstream, model, lease)
            return
        if upstream is not None:
            self._live[self._lease(lease)] = self._slots_key(upstream, model)
        answer.set_result(upstream)

    def give_back(self, upstream: str, model: str, lease: str) -> None:
        full = self._lease(lease)
        self._live.pop(full, None)
        self._queue(
            self._give_back,
            [self._slots_key(upstream, model), self._heads_key(model)],
            [full, self._channel, model],
        )

    def advertise(self, model: str, head: Claim | None) -> None:
        rank = _rank(head) if head is not None else ""
        if self._heads.get(model, "") == rank:
            return
        if rank:
            self._heads[model] = rank
        else:
            self._heads.pop(model, None)
        self._queue(
            self._advertise, [self._heads_key(model)], [self._instance, rank, int(self.lease_ttl * 1e6)]
        )

    def on_freed(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    async def busy(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int] | None:
        """Live leases per (upstream, model), summed over instances; None when Redis does not answer."""
        if not pairs:
            return {}
        try:
            async with asyncio.timeout(0.5):
                counts = await self._busy(keys=[self._slots_key(u, m) for u, m in pairs])
        except (*REDIS_DOWN, TimeoutError):
            return None
        return {pair: int(count) for pair, count in zip(pairs, counts, strict=True)}

    # -- background ---------------------------------------------------------------------------------

    def _queue(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self._writes.queue(script, keys, args)

    async def _keep_forever(self) -> None:
        """Renew live leases and advertised heads; nudge the queue now and then (a lost message, an
        expired lease of a dead instance)."""
        since_renewal = 0.0
        while True:
            await asyncio.sleep(self._nudge_interval)
            since_renewal += self._nudge_interval
            if since_renewal >= self.lease_ttl / 3:
                since_renewal = 0.0
                ttl = int(self.lease_ttl * 1e6)
                for lease, key in list(self._live.items()):
                    self._queue(self._renew, [key], [lease, ttl])
                for model, rank in list(self._heads.items()):
                    self._queue(self._advertise, [self._heads_key(model)], [self._instance, rank, ttl])
            self._notify(list(self._models))

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            data = message["data"]
                            self._notify([data.decode() if isinstance(data, bytes) else str(data)])
            except REDIS_DOWN as error:
                log.warning("slot listener lost Redis (%s); reconnecting", error.__class__.__name__)
                await asyncio.sleep(1.0)

    def _notify(self, models: list[str]) -> None:
        for model in models:
            for callback in self._callbacks:
                callback(model)

    async def start(self) -> None:
        self._writes.start()
        self._keeper.start()
        self._listener.start()

    async def close(self) -> None:
        await self._listener.stop()
        await self._keeper.stop()
        for model in list(self._heads):
            self.advertise(model, None)
        if self._owns_writes:
            await self._writes.close()
