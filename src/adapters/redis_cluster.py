"""Cluster-wide counters and key-revocation broadcasts over Redis."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

import redis.asyncio as aioredis

from ollama_gate.adapters.redis_writes import REDIS_DOWN
from ollama_gate.services.background import BackgroundTask
from ollama_gate.services.periodic import Periodic

log = logging.getLogger(__name__)


class RedisCounters:
    """Counts gather in memory and reach Redis in one pipeline every `flush_interval` seconds, so a
    rejection never waits for Redis (a stalled Redis used to add its socket timeout to every 429).
    Counts that could not be written are kept for the next flush; `read` adds what is still unwritten."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "ollama-gate",
        flush_interval: float = 1.0,
        read_timeout: float = 0.25,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._read_timeout = read_timeout
        self._unwritten: Counter[str] = Counter()
        self._flusher = Periodic("shared-counters", self.flush, flush_interval)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:counter:{name}"

    def add(self, name: str) -> None:
        self._unwritten[name] += 1

    async def flush(self) -> None:
        if not self._unwritten:
            return
        batch, self._unwritten = self._unwritten, Counter()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for name, count in batch.items():
                    pipe.incrby(self._key(name), count)
                await pipe.execute()
        except REDIS_DOWN:
            self._unwritten.update(batch)
            log.debug("Redis down: %d shared counts kept for the next flush", sum(batch.values()))

    async def read(self, names: list[str]) -> dict[str, int] | None:
        try:
            async with asyncio.timeout(self._read_timeout):
                values = await self._client.mget([self._key(n) for n in names])
        except (*REDIS_DOWN, TimeoutError):
            return None
        return {
            name: int(value or 0) + self._unwritten[name] for name, value in zip(names, values, strict=True)
        }

    async def start(self) -> None:
        await self._flusher.start()

    async def close(self) -> None:
        await self._flusher.close()


class RedisKeyEvents:
    """Pub/sub on one channel; the listener reconnects by itself after an outage."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ollama-gate") -> None:
        self._client = client
        self._channel = f"{prefix}:key-revoked"
        self._handlers: list[Callable[[int], None]] = []
        self._listener = BackgroundTask("key-revocations", self._listen_forever)
        self.listening = asyncio.Event()

    async def publish_revoked(self, key_id: int) -> None:
        try:
            await self._client.publish(self._channel, str(key_id))
        except REDIS_DOWN:
            log.warning(
                "Redis down: revocation of key %d not broadcast; other instances revalidate it soon", key_id
            )

    def subscribe(self, on_revoked: Callable[[int], None]) -> None:
        self._handlers.append(on_revoked)

    async def start(self) -> None:
        self._listener.start()

    async def close(self) -> None:
        await self._listener.stop()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except REDIS_DOWN as error:
                self.listening.clear()
                log.warning("revocation listener lost Redis (%s); reconnecting", error.__class__.__name__)
                # Revocations missed meanwhile are still caught by the caches' revalidation.
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        async with self._client.pubsub() as pubsub:
            await pubsub.subscribe(self._channel)
            self.listening.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                try:
                    key_id = int(message["data"])
                except (TypeError, ValueError):
                    continue
                for handler in self._handlers:
                    handler(key_id)
