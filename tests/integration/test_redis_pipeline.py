"""The pipeliner's own connection to Redis: replies in order on a real Redis (its database, its error
replies, a script it does not know), and bad luck on a socket: a Redis that never answers, one that
closes the connection, one that speaks garbage, a batch cancelled midway. Each ends in an error the
callers treat as an outage, never a hang, and the next batch is served on a fresh connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from ollama_gate.adapters.redis_pipeline import RespPipeline
from ollama_gate.adapters.redis_writes import REDIS_DOWN, PipelinedWrites
from tests.support.services import shared_redis_url


def pipeline_for(url: str, timeout: float = 0.5) -> RespPipeline:
    client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    pipeline = RespPipeline.for_client(client)
    assert pipeline is not None
    return pipeline


async def test_replies_come_back_in_order_from_the_urls_database() -> None:
    url = shared_redis_url()
    pipeline = pipeline_for(url)
    raw = aioredis.Redis.from_url(url)
    try:
        replies = await pipeline.run([("SET", "p:a", 1), ("INCRBY", "p:a", 41), ("GET", "p:a"), ("PING",)])
        assert replies == [b"OK", 42, b"42", b"PONG"]
        assert await raw.get("p:a") == b"42"  # the same database as the client's (not db 0)
    finally:
        pipeline.close()
        await raw.aclose()


async def test_an_error_reply_is_returned_as_redis_pys_exception_and_the_rest_is_answered() -> None:
    pipeline = pipeline_for(shared_redis_url())
    try:
        replies = await pipeline.run(
            [("EVALSHA", "0" * 40, 0), ("INCRBY", "p:n", "not a number"), ("EVAL", "return 7", 0)]
        )
        assert isinstance(replies[0], NoScriptError)
        assert isinstance(replies[1], ResponseError) and not isinstance(replies[1], NoScriptError)
        assert replies[2] == 7
    finally:
        pipeline.close()


async def test_the_pipeliner_runs_a_script_redis_has_forgotten() -> None:
    url = shared_redis_url()
    client = aioredis.Redis.from_url(url, socket_timeout=0.5)
    script = client.register_script("return ARGV[1] .. KEYS[1]")
    writes = PipelinedWrites(client, "test")
    try:
        assert await writes.submit(script, ["k"], ["v"]) == b"vk"
        await client.script_flush()  # as after a restart of Redis
        assert await writes.submit(script, ["k"], ["w"]) == b"wk"
    finally:
        await writes.close()
        await client.aclose()


async def test_a_wrong_password_is_an_outage_not_a_hang() -> None:
    url = shared_redis_url().replace("redis://", "redis://:not-the-password@", 1)
    pipeline = pipeline_for(url)
    with pytest.raises(REDIS_DOWN):
        await asyncio.wait_for(pipeline.run([("PING",)]), 5)


async def test_a_killed_connection_fails_its_batch_and_the_next_one_reconnects() -> None:
    url = shared_redis_url()
    pipeline = pipeline_for(url)
    raw = aioredis.Redis.from_url(url)
    try:
        [connection_id] = await pipeline.run([("CLIENT", "ID")])
        # Killed while a batch waits for its reply: the batch fails as an outage.
        pending = asyncio.ensure_future(pipeline.run([("BLPOP", "p:never", 2)]))
        await asyncio.sleep(0.1)
        assert await raw.client_kill_filter(_id=connection_id) == 1
        with pytest.raises(REDIS_DOWN):
            await asyncio.wait_for(pending, 5)
        assert await pipeline.run([("PING",)]) == [b"PONG"]
        [other_id] = await pipeline.run([("CLIENT", "ID")])
        assert other_id != connection_id
    finally:
        pipeline.close()
        await raw.aclose()


class FakeRedis:
    """A server on a real socket that answers each connection as `answer(number, data)` says (None: it
    stays silent)."""

    def __init__(self, answer: Callable[[int, bytes], bytes | None]) -> None:
        self._answer = answer
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        while data := await reader.read(65536):
            reply = self._answer(number, data)
            if reply is not None:
                writer.write(reply)
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"


Answer = Callable[[int, bytes], bytes | None]
StartFake = Callable[[Answer], Awaitable[FakeRedis]]


@pytest.fixture
async def fake_redis() -> AsyncIterator[StartFake]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> FakeRedis:
        fake = FakeRedis(answer)
        fake.server = await asyncio.start_server(fake._serve, "127.0.0.1", 0)
        servers.append(fake.server)
        return fake

    yield start
    for server in servers:
        server.close()


async def test_a_redis_that_never_answers_times_out_and_the_next_batch_gets_a_new_connection(
    fake_redis: StartFake,
) -> None:
    # The first connection is never answered; the second one is.
    fake = await fake_redis(lambda number, data: None if number == 1 else b"+PONG\r\n")
    pipeline = pipeline_for(fake.url, timeout=0.2)
    with pytest.raises(REDIS_DOWN):
        await asyncio.wait_for(pipeline.run([("PING",)]), 5)
    assert await pipeline.run([("PING",)]) == [b"PONG"]
    assert fake.connections == 2
    pipeline.close()


async def test_a_batch_cancelled_midway_leaves_no_reply_for_the_next_one(
    fake_redis: StartFake,
) -> None:
    def late_on_the_first_connection(number: int, data: bytes) -> bytes | None:
        return None if number == 1 else f"+answer-on-{number}\r\n".encode()

    fake = await fake_redis(late_on_the_first_connection)
    pipeline = pipeline_for(fake.url, timeout=2)
    first = asyncio.ensure_future(pipeline.run([("GET", "a")]))
    await asyncio.sleep(0.1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await pipeline.run([("PING",)]) == [b"answer-on-2"]
    pipeline.close()


async def test_a_reply_redis_would_never_send_is_an_outage(
    fake_redis: StartFake,
) -> None:
    fake = await fake_redis(lambda number, data: b"?what\r\n")
    pipeline = pipeline_for(fake.url)
    with pytest.raises(REDIS_DOWN):
        await asyncio.wait_for(pipeline.run([("PING",)]), 5)
    pipeline.close()


@pytest.mark.parametrize("url", ["rediss://127.0.0.1:6379/0", "unix:///tmp/redis.sock"])
def test_what_is_not_plain_tcp_stays_with_redis_py(url: str) -> None:
    assert RespPipeline.for_client(aioredis.Redis.from_url(url)) is None


async def test_a_redis_still_loading_its_data_is_an_outage_to_the_callers(fake_redis: StartFake) -> None:
    # After a restart with persistence Redis answers LOADING for a while: the callers fall back, as when
    # it is down, and the connection is not used again.
    fake = await fake_redis(lambda number, data: b"-LOADING Redis is loading the dataset in memory\r\n")
    client = aioredis.Redis.from_url(fake.url, socket_timeout=0.5)
    writes = PipelinedWrites(client, "test")
    try:
        for _ in range(2):
            with pytest.raises(REDIS_DOWN):
                await asyncio.wait_for(writes.submit(Script(), ["k"], []), 5)
        assert fake.connections == 2
    finally:
        await writes.close()


class Script:
    sha = "0" * 40
    script = "return 1"


async def test_a_failed_reload_of_a_forgotten_script_fails_only_the_calls_that_needed_it(
    fake_redis: StartFake,
) -> None:
    def first_known_second_forgotten_then_silence(number: int, data: bytes) -> bytes | None:
        return b":1\r\n-NOSCRIPT No matching script\r\n" if data.count(b"EVALSHA") == 2 else None

    fake = await fake_redis(first_known_second_forgotten_then_silence)
    client = aioredis.Redis.from_url(fake.url, socket_timeout=0.3)
    writes = PipelinedWrites(client, "test")
    try:
        ran, forgotten = writes.submit(Script(), ["a"], []), writes.submit(Script(), ["b"], [])
        assert await asyncio.wait_for(ran, 5) == 1  # it ran in Redis: its caller must know
        with pytest.raises(REDIS_DOWN):
            await asyncio.wait_for(forgotten, 5)
    finally:
        await writes.close()
