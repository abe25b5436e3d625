"""A coroutine run every few seconds in the background, and once more on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, action: Callable[[], Awaitable[None]], interval: float) -> None:
        self._name = name
        self._action = action
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._run_once()

    async def _run_once(self) -> None:
        try:
            await self._action()
        except Exception:
            log.exception("%s failed", self._name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._run_once()
