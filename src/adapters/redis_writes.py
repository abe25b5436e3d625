"""Scripts sent to Redis in pipelines by one background task, in the order they were submitted.

Two kinds: writes nothing waits for (the ends of requests, slots given back, heads advertised), queued
with `queue`, and calls whose answer a request awaits (a slot taken), with `submit`. Whatever is
submitted while a pipeline is in flight goes out in the next one, so a burst is a few round trips, at
most one pipeline is in flight, and a call is answered after every write queued before it (a slot this
process gave back is free in Redis before it asks for one).

Scripts go into a pipeline as plain EVALSHA: redis-py's own way (calling the Script on the pipeline)
asks `SCRIPT EXISTS` for every script before every pipeline, one more round trip each time. A script
Redis does not know (it restarted, or was flushed) is loaded and run again on its own. The pipelines go
out on a connection of the pipeliner's own (adapters/redis_pipeline.py) when the client's is plain TCP,
else through redis-py's `Pipeline`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ollama_gate.adapters.redis_pipeline import RespPipeline
from ollama_gate.services.background import BackgroundTask

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_BATCH = 200

# KEYS: a sorted set of leases scored by their expiry (us). ARGV: lease, ttl (us). Pushes a live lease's
# expiry on (a concurrency lease of the limiter, a GPU slot of the shared slots), never adds one.
RENEW_LEASE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000))
return 1
"""

# A registered script, its keys, its arguments, and the future of a call (None: a write).
_Entry = tuple[Any, list[str], list[Any], "asyncio.Future[Any] | None"]


async def _run_pipelined(
    client: aioredis.Redis, pipeline: RespPipeline | None, entries: list[_Entry]
) -> list[Any]:
    """Every entry in one pipeline, in order: their results (an error is returned, not raised)."""
    if pipeline is not None:
        return await _run_on_own_connection(pipeline, entries)
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args, _ in entries:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    for index, result in enumerate(results):
        if isinstance(result, NoScriptError):
            script, keys, args, _ = entries[index]
            try:
                results[index] = await script(keys=keys, args=args)  # loads it, then runs it
            except Exception as error:
                results[index] = error
    return results


async def _run_on_own_connection(pipeline: RespPipeline, entries: list[_Entry]) -> list[Any]:
    results = await pipeline.run(
        [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in entries]
    )
    unknown = [index for index, result in enumerate(results) if isinstance(result, NoScriptError)]
    if unknown:
        # EVAL runs a script and caches it: the next EVALSHA of it finds it. If that fails, only these
        # fail: the others have run in Redis, and their callers must see what they did.
        try:
            again: list[Any] = await pipeline.run(
                [
                    ("EVAL", entries[i][0].script, len(entries[i][1]), *entries[i][1], *entries[i][2])
                    for i in unknown
                ]
            )
        except REDIS_DOWN as error:
            again = [error] * len(unknown)
        for index, result in zip(unknown, again, strict=True):
            results[index] = result
    return results


class PipelinedWrites:
    """What is queued while Redis is down is logged and lost: every write must be one whose loss Redis
    repairs by itself (a lease that expires, a head that is advertised again); a call gets the error."""

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        self._client = client
        self._pipeline = RespPipeline.for_client(client)
        self._name = name
        self._entries: deque[_Entry] = deque()
        self._ready = asyncio.Event()
        self._closing = False
        self._sender = BackgroundTask(name, self._send_forever)

    def __len__(self) -> int:
        return len(self._entries)

    def queue(self, script: Any, keys: list[str], args: list[Any]) -> None:
        """A write: sent soon, in order; nothing waits for it."""
        self._entries.append((script, keys, args, None))
        self._ready.set()

    def submit(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """A call: its result (or its error: REDIS_DOWN when Redis is unreachable) in the future, once
        every entry queued before it has been sent."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closing:  # the sender is stopping: nothing more goes out
            future.set_exception(RedisConnectionError(f"{self._name}: closing"))
            return future
        self._entries.append((script, keys, args, future))
        self._ready.set()
        self._sender.start()  # idempotent: a call is answered even by an owner that was never started
        return future

    async def _send_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self.drain()
            if self._closing:
                return

    async def drain(self) -> None:
        while self._entries:
            batch = [self._entries.popleft() for _ in range(min(len(self._entries), _BATCH))]
            try:
                results = await _run_pipelined(self._client, self._pipeline, batch)
            except REDIS_DOWN as error:
                writes = sum(1 for *_, future in batch if future is None)
                log.warning("Redis down: %d %s not sent (%s)", writes, self._name, error.__class__.__name__)
                results = [error] * len(batch)
            except Exception as error:
                # Anything else (a driver bug, a reply it cannot read) must not end the sender: every
                # later call would then wait forever. The batch fails as in an outage, and callers fall
                # back as they do when Redis is down.
                log.exception("%d %s failed unexpectedly", len(batch), self._name)
                outage = RedisConnectionError(f"{self._name}: {error.__class__.__name__}")
                results = [outage] * len(batch)
            self._settle(batch, results)

    def _settle(self, batch: list[_Entry], results: list[Any]) -> None:
        failed = []
        for (*_, future), result in zip(batch, results, strict=True):
            if future is None:
                if isinstance(result, Exception) and not isinstance(result, REDIS_DOWN):
                    failed.append(result)
            elif not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        if failed:
            log.error("%d %s failed in Redis: %s", len(failed), self._name, failed[0])

    def start(self) -> None:
        self._sender.start()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop."""
        self._closing = True
        self._ready.set()
        await self._sender.finish(timeout)
        if self._pipeline is not None:
            self._pipeline.close()
