"""Writes to Redis that nothing waits for (the ends of requests, slots given back, heads advertised):
queued, and sent in pipelines by one background task, so that a burst of them is a few round trips."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ollama_gate.services.background import BackgroundTask

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_BATCH = 200


class PipelinedWrites:
    """`queue(script, keys, args)` returns at once; the script runs soon after, in a pipeline. What is
    queued while Redis is down is logged and lost: every such write must be one whose loss Redis repairs
    by itself (a lease that expires, a head that is advertised again)."""

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        self._client = client
        self._name = name
        self._writes: deque[tuple[Any, list[str], list[Any]]] = deque()
        self._ready = asyncio.Event()
        self._closing = False
        self._sender = BackgroundTask(name, self._send_forever)

    def __len__(self) -> int:
        return len(self._writes)

    def queue(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self._writes.append((script, keys, args))
        self._ready.set()

    async def _send_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self.drain()
            if self._closing:
                return

    async def drain(self) -> None:
        while self._writes:
            batch = [self._writes.popleft() for _ in range(min(len(self._writes), _BATCH))]
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for script, keys, args in batch:
                        await script(keys=keys, args=args, client=pipe)
                    await pipe.execute()
            except REDIS_DOWN as error:
                log.warning(
                    "Redis down: %d %s not sent (%s)", len(batch), self._name, error.__class__.__name__
                )

    def start(self) -> None:
        self._sender.start()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop."""
        self._closing = True
        self._ready.set()
        await self._sender.finish(timeout)
