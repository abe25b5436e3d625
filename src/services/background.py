"""The one way a component runs a task in the background: started once, cancelled and awaited on stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class BackgroundTask:
    """A named task that runs `work()` while its owner is started.

    `start()` is idempotent; `stop()` cancels the task and waits until it has really ended, so an owner
    that closes its resources right after never pulls them from under a task still using them.
    """

    __slots__ = ("_name", "_task", "_work")

    def __init__(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._name = name
        self._work = work
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._work(), name=self._name)

    def cancel(self) -> None:
        """Ask the task to stop, without waiting (for owners that must cancel at a chosen moment)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
