"""A coroutine run every few seconds in the background, and once more on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ollama_gate.services.background import BackgroundTask

log = logging.getLogger(__name__)


class Periodic:
    """Runs `action` every `interval` seconds while started, and once more on close (a last flush)."""

    def __init__(self, name: str, action: Callable[[], Awaitable[None]], interval: float) -> None:
        self._name = name
        self._action = action
        self._interval = interval
        self._task = BackgroundTask(name, self._run)

    async def start(self) -> None:
        self._task.start()

    async def close(self) -> None:
        await self._task.stop()
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
