"""The one way a component runs a task in the background: started once, cancelled and awaited on stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


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
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("background task %s failed", self._name)

    async def finish(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a task that ends by itself (told so by its owner), then stop
        it whatever it is doing."""
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except Exception:  # TimeoutError included: `stop` below ends it, and logs how it failed
                log.debug("background task %s did not end by itself in %ss", self._name, timeout)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # the caller is being cancelled, not the task
        await self.stop()
