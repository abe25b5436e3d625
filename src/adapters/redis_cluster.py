"""Cluster-wide counters and key-revocation broadcasts over Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from ollama_gate.adapters.redis_ratelimit import REDIS_DOWN

log = logging.getLogger(__name__)


class RedisCounters:
    def __init__(self, client: aioredis.Redis, prefix: str = "ollama-gate") -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self._prefix}:counter:{name}"

    async def increment(self, name: str) -> None:
        try:
            await self._client.incr(self._key(name))
        except REDIS_DOWN:
            log.debug("Redis down: shared counter %s not incremented", name)

    async def read(self, names: list[str]) -> dict[str, int] | None:
        try:
            values = await self._client.mget([self._key(n) for n in names])
        except REDIS_DOWN:
            return None
        return {name: int(value or 0) for name, value in zip(names, values, strict=True)}


class RedisKeyEvents:
    """Pub/sub on one channel; the listener reconnects by itself after an outage."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ollama-gate") -> None:
        self._client = client
        self._channel = f"{prefix}:key-revoked"
        self._handlers: list[Callable[[int], None]] = []
        self._task: asyncio.Task[None] | None = None
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
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="key-revocations")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

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
