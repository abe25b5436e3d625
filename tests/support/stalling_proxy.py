"""A TCP proxy that can stall: connections stay open, and not one byte goes through either way.

That is how a dependency fails worst (a hung PostgreSQL, a Redis behind a dead link): nothing is refused,
nothing times out by itself. Run in a thread; `stall()` and `resume()` from the test. It also keeps what
the clients sent, read by read (`heard`): on loopback one read is one write of the client's, so a test
can tell what went to the server together.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from urllib.parse import urlsplit

from tests.support.fake_ollama import free_port


class StallingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._running = threading.Event()
        self._running.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.heard: list[bytes] = []  # every read from a client, in order (appended by the proxy's thread)

    def url_for(self, url: str) -> str:
        """`url` (a server's, on the target port) through this proxy."""
        parts = urlsplit(url)
        return parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{self.port}")).geturl()

    def stall(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def start(self) -> StallingProxy:
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def stop(self) -> None:
        """Close every connection and end every task before the loop stops: nothing outlives it."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    async def _shutdown(self) -> None:
        self._running.set()  # a stalled pump must not sleep through its cancellation
        if self._server is not None:
            self._server.close()
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    def __enter__(self) -> StallingProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _serve(self, ready: Future[None]) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", self.port)
            )
        except OSError as error:
            ready.set_exception(error)
            return
        ready.set_result(None)
        self._loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._tasks.add(current)
        self._writers.append(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.append(upstream_writer)
        await asyncio.gather(
            self._pump(reader, upstream_writer, self.heard),
            self._pump(upstream_reader, writer),
            return_exceptions=True,
        )

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, heard: list[bytes] | None = None
    ) -> None:
        try:
            while data := await source.read(65536):
                if heard is not None:
                    heard.append(data)
                while not self._running.is_set():  # stalled: hold the bytes, keep the connection
                    await asyncio.sleep(0.05)
                sink.write(data)
                await sink.drain()
        finally:
            if not sink.is_closing():
                sink.close()
