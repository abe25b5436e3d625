"""One plain connection to Redis for the pipeliner: a batch of commands packed and parsed by hiredis.

redis-py's `Pipeline` costs 22-39 us of CPU per command on this machine (its packer in pure Python, a
timeout context and an error-message string per reply read, a pool checkout and a `wait_for` task per
send), where packing and parsing a command in hiredis costs about 2 us. The hot path sends two or four
scripts per request, so the pipeliner keeps one connection of its own and speaks RESP on it directly.

It is only that: commands out in one write, their replies back in order, an error reply returned as
the exception redis-py would raise. It connects as the client's pool would (host, port, username and
password, db, its timeouts; not the client name, no health-check PING: a connection that died while idle
costs one failed batch, and the next opens another); anything that is not plain TCP with RESP2 (TLS, a
unix socket, a credential provider, RESP3) stays with redis-py (`for_client` returns None).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

_DEFAULT_TIMEOUT = 5.0
# redis-py's mapping of an error reply to its exception classes (untyped there).
_parse_error = cast(Callable[[str], Exception], BaseParser.parse_error)


class _Replies(asyncio.Protocol):
    """The socket's side: replies parsed as they arrive and handed to the batch that waits for them."""

    def __init__(self, decode: bool) -> None:
        self._reader = hiredis.Reader(encoding="utf-8") if decode else hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self._expected = 0
        self._replies: list[Any] = []
        self._done: asyncio.Future[list[Any]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it

    def expect(self, count: int) -> asyncio.Future[list[Any]]:
        self._expected, self._replies = count, []
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                self._replies.append(reply)
        except hiredis.ProtocolError as error:
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {error}"))
            return
        if self._done is not None and len(self._replies) >= self._expected:
            done, self._done = self._done, None
            if not done.done():
                done.set_result(self._replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(RedisConnectionError(f"Redis closed the connection ({exc or 'end of stream'})"))

    def _fail(self, error: Exception) -> None:
        self.abort()
        if self._done is not None:
            done, self._done = self._done, None
            if not done.done():
                done.set_exception(error)

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()


class RespPipeline:
    """Batches of commands on one connection of its own, opened on first use and after any failure.
    One batch at a time (the pipeliner's sender awaits each one)."""

    def __init__(self, connection: dict[str, Any]) -> None:
        self._host = str(connection.get("host", "localhost"))
        self._port = int(connection.get("port", 6379))
        self._db = int(connection.get("db", 0) or 0)
        self._username: str | None = connection.get("username")
        self._password: str | None = connection.get("password")
        self._decode = bool(connection.get("decode_responses", False))
        self._timeout = float(connection.get("socket_timeout") or _DEFAULT_TIMEOUT)
        self._connect_timeout = float(connection.get("socket_connect_timeout") or _DEFAULT_TIMEOUT)
        self._replies: _Replies | None = None

    @classmethod
    def for_client(cls, client: aioredis.Redis) -> RespPipeline | None:
        """A pipeline to where `client`'s pool connects, or None when that is more than plain TCP."""
        pool = getattr(client, "connection_pool", None)
        if pool is None or pool.connection_class is not Connection:
            return None
        kwargs: dict[str, Any] = pool.connection_kwargs
        if kwargs.get("credential_provider") is not None or kwargs.get("protocol") not in (None, 2, "2"):
            return None
        return cls(kwargs)

    async def run(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Each command's reply, in order; an error reply is its exception, returned, not raised. Raises
        RedisConnectionError or RedisTimeoutError when Redis cannot be reached or does not answer within
        the socket timeout (the connection is then dropped: the next batch opens another)."""
        replies = await self._connected()
        answers = await self._exchange(replies, commands, self._timeout)
        for index, answer in enumerate(answers):
            if isinstance(answer, hiredis.ReplyError):
                # redis-py's own classes: NOSCRIPT is NoScriptError (the script is loaded again); LOADING,
                # NOAUTH or too many clients are ConnectionErrors, an outage to the callers, and this
                # connection is not to be used again.
                error = answers[index] = _parse_error(str(answer))
                if isinstance(error, RedisConnectionError):
                    replies.abort()
        return answers

    async def _exchange(
        self, replies: _Replies, commands: Sequence[Sequence[Any]], timeout: float
    ) -> list[Any]:
        done = replies.expect(len(commands))
        assert replies.transport is not None
        replies.transport.write(b"".join([hiredis.pack_command(tuple(command)) for command in commands]))
        try:
            async with asyncio.timeout(timeout):
                return await done
        except TimeoutError:
            replies.abort()
            raise RedisTimeoutError(f"Redis did not answer within {timeout:g}s") from None
        except BaseException:
            replies.abort()  # cancelled mid-batch: its replies would be read as the next batch's
            raise

    async def _connected(self) -> _Replies:
        if self._replies is not None and not self._replies.lost:
            return self._replies
        self._replies = None
        loop = asyncio.get_running_loop()
        replies = _Replies(self._decode)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(lambda: replies, self._host, self._port)
        except (OSError, TimeoutError) as error:
            raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}") from error
        handshake: list[tuple[Any, ...]] = []
        if self._username or self._password:  # as redis-py: a user without a password sends ""
            credentials = (self._username, self._password or "") if self._username else (self._password,)
            handshake.append(("AUTH", *credentials))
        if self._db:
            handshake.append(("SELECT", self._db))
        if handshake:
            answers = await self._exchange(replies, handshake, self._connect_timeout)
            refused = next((a for a in answers if isinstance(a, hiredis.ReplyError)), None)
            if refused is not None:
                replies.abort()
                raise RedisConnectionError(f"Redis refused the connection's set-up: {refused}")
        self._replies = replies
        return replies

    def close(self) -> None:
        if self._replies is not None:
            transport, self._replies = self._replies.transport, None
            if transport is not None:
                transport.close()
