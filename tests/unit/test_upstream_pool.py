"""Routing over several Ollama servers: model-aware, least busy, failover on refused connections."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.adapters.upstream_pool import UpstreamPool
from ollama_gate.domain.errors import UpstreamTimeout, UpstreamUnavailable
from ollama_gate.domain.model_names import model_key
from ollama_gate.domain.status import ModelInfo
from ollama_gate.ports.llm import LLMRouter, ProxyBackend, ProxyResponse


class FakeResponse:
    def __init__(self, body: bytes = b"{}", status: int = 200) -> None:
        self.status = status
        self.content_type = "application/json"
        self._body = body
        self.closed = False

    async def read(self) -> bytes:
        return self._body

    async def lines(self) -> AsyncIterator[bytes]:
        yield self._body + b"\n"

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        self.closed = True


class FakeServer:
    """One Ollama server: lists `models`, refuses connections while `refusing`."""

    def __init__(self, name: str, models: tuple[str, ...] = ("smollm:latest",)) -> None:
        self.base_url = f"http://{name}:11434"
        self.name = name
        self.models_listed = list(models)
        self.refusing = False
        self.failure: Exception | None = None
        self.requests: list[tuple[str, str]] = []
        self.loaded: list[str] = []  # what its /api/ps lists
        self.attempts = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def post(self, path: str, body: bytes, upstream: str | None = None) -> FakeResponse:
        return await self.request("POST", path, body)

    async def request(
        self, method: str, path: str, body: bytes | AsyncIterable[bytes] | None
    ) -> FakeResponse:
        if (method, path) == ("GET", "/api/ps") and not self.refusing:
            # The pool's own polling, not a request it routed.
            return FakeResponse(
                json.dumps({"models": [{"name": n, "model": n} for n in self.loaded]}).encode()
            )
        self.attempts += 1
        if self.refusing:
            raise UpstreamUnavailable(f"cannot connect to {self.base_url}")
        if self.failure is not None:
            raise self.failure
        self.requests.append((method, path))
        return FakeResponse(self.base_url.encode())

    async def models(self, timeout: float) -> list[ModelInfo]:
        if self.refusing:
            raise UpstreamUnavailable(f"cannot connect to {self.base_url}")
        return [ModelInfo(name, 1000) for name in self.models_listed]


def servers(*specs: tuple[str, tuple[str, ...]]) -> list[FakeServer]:
    return [FakeServer(name, models) for name, models in specs]


async def started(backends: list[FakeServer]) -> UpstreamPool:
    as_ports: list[ProxyBackend] = list(backends)
    pool = UpstreamPool(as_ports)
    await pool.refresh()
    return pool


async def send(pool: LLMRouter, model: str | None = "smollm:latest") -> ProxyResponse:
    return await pool.request("POST", "/api/chat", b"{}", model=model)


async def served_by(pool: LLMRouter, model: str | None = "smollm:latest") -> str:
    response = await send(pool, model)
    body = await response.read()
    response.close()
    return body.decode()


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("smollm", "smollm:latest"),
        ("SmolLM:Latest", "smollm:latest"),
        ("llama3.2:1b", "llama3.2:1b"),
        ("hf.co/org/model", "hf.co/org/model:latest"),
        ("localhost:5000/org/model", "localhost:5000/org/model:latest"),
    ],
)
def test_model_names_match_as_ollama_matches_them(name: str, key: str) -> None:
    assert model_key(name) == key


async def test_a_request_goes_only_to_servers_that_have_its_model() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest", "qwen:7b")))
    pool = await started([a, b])

    answered = [await served_by(pool, "qwen:7b") for _ in range(4)]

    assert answered == [b.base_url] * 4
    assert a.requests == []


async def test_a_model_named_without_a_tag_finds_its_latest() -> None:
    a, b = servers(("a", ("llama3.2:1b",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])

    assert {await served_by(pool, "smollm") for _ in range(3)} == {b.base_url}


async def test_sequential_requests_are_spread_over_equally_idle_servers() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])

    answered = [await served_by(pool) for _ in range(10)]

    assert answered.count(a.base_url) == answered.count(b.base_url) == 5


async def test_the_server_with_fewest_requests_in_flight_is_chosen() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    held = await send(pool)  # not read yet: still in flight
    busy = a if a.requests else b

    answered = {await served_by(pool) for _ in range(4)}

    assert answered == {a.base_url, b.base_url} - {busy.base_url}
    held.close()


async def test_a_model_nobody_lists_goes_to_some_server_so_ollama_can_say_404() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])

    assert await served_by(pool, "missing:latest") in {a.base_url, b.base_url}


async def test_a_refused_connection_is_retried_on_the_next_server_and_marked_down() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    a.refusing = True

    answered = [await served_by(pool) for _ in range(4)]

    assert answered == [b.base_url] * 4
    assert [state.online for state in pool.upstream_states()] == [False, True]
    assert all(state.in_flight == 0 for state in pool.upstream_states())


async def test_a_down_server_is_skipped_until_a_probe_finds_it_back() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    a.refusing = True
    await pool.refresh()
    a.refusing = False

    while_down = [await served_by(pool) for _ in range(4)]
    await pool.refresh()
    after_probe = [await served_by(pool) for _ in range(4)]

    assert while_down == [b.base_url] * 4
    assert after_probe.count(a.base_url) == 2


async def test_when_no_server_can_be_reached_each_is_tried_once_and_the_request_fails() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    a.refusing = b.refusing = True
    await pool.refresh()

    with pytest.raises(UpstreamUnavailable):
        await send(pool)

    assert (a.attempts, b.attempts) == (1, 1)
    assert all(state.in_flight == 0 for state in pool.upstream_states())


async def test_a_failure_after_connecting_is_not_retried_elsewhere() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    a.failure = b.failure = UpstreamTimeout("silent")

    with pytest.raises(UpstreamTimeout):
        await send(pool)

    assert a.attempts + b.attempts == 1
    assert [state.online for state in pool.upstream_states()] == [True, True]


async def test_a_streamed_upload_goes_to_one_server_only() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    a.refusing = True

    async def upload() -> AsyncIterator[bytes]:
        yield b"blob"

    with pytest.raises(UpstreamUnavailable):
        await pool.request("POST", "/api/blobs/sha256:1", upload(), model=None, sticky=True)

    assert (a.attempts, b.attempts) == (1, 0)


async def test_sticky_requests_follow_the_configured_order_not_the_load() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    held = await pool.request("POST", "/api/create", b"{}", model=None, sticky=True)

    again = await pool.request("POST", "/api/create", b"{}", model=None, sticky=True)

    assert await held.read() == await again.read() == a.base_url.encode()


async def test_in_flight_counts_open_responses_and_is_given_back_once() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    first, second = await send(pool), await send(pool)

    assert sum(state.in_flight for state in pool.upstream_states()) == 2
    await first.read()
    first.close()
    first.close()
    assert sum(state.in_flight for state in pool.upstream_states()) == 1
    second.close()
    assert sum(state.in_flight for state in pool.upstream_states()) == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), max_size=30))
async def test_in_flight_never_drifts_whatever_the_order_of_opens_and_closes(opens: list[bool]) -> None:
    pool = UpstreamPool([FakeServer("a"), FakeServer("b"), FakeServer("c")])
    open_responses: list[ProxyResponse] = []
    for is_open in opens:
        if is_open or not open_responses:
            open_responses.append(await send(pool))
        else:
            open_responses.pop(0).close()
        states = pool.upstream_states()
        assert sum(state.in_flight for state in states) == len(open_responses)
        assert max(s.in_flight for s in states) - min(s.in_flight for s in states) <= 1


async def test_the_gateways_own_chat_is_routed_by_the_model_in_its_body() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("qwen:7b",)))
    pool = await started([a, b])

    response = await pool.post("/api/generate", b'{"model": "qwen:7b", "prompt": "hi"}')

    assert await response.read() == b.base_url.encode()
    assert a.requests == []


async def test_models_is_the_union_and_says_which_server_is_down() -> None:
    a, b = servers(("a", ("smollm:latest", "qwen:7b")), ("b", ("smollm:latest", "phi:2b")))
    pool = await started([a, b])

    union = await pool.models(1.0)
    b.refusing = True
    only_a = await pool.models(1.0)

    assert sorted(m.name for m in union) == ["phi:2b", "qwen:7b", "smollm:latest"]
    assert sorted(m.name for m in only_a) == ["qwen:7b", "smollm:latest"]
    assert [(s.url, s.online, s.models) for s in pool.upstream_states()] == [
        (a.base_url, True, ("qwen:7b", "smollm:latest")),
        (b.base_url, False, ("phi:2b", "smollm:latest")),  # the last list known
    ]


async def test_models_fails_when_no_server_answers() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])
    a.refusing = b.refusing = True

    with pytest.raises(UpstreamUnavailable):
        await pool.models(1.0)


async def test_each_asks_every_server_and_keeps_the_answers() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("smollm:latest",)))
    pool = await started([a, b])

    both = await pool.each("/api/tags", 1.0)
    b.refusing = True
    one = await pool.each("/api/tags", 1.0)

    assert both == [a.base_url.encode(), b.base_url.encode()]
    assert one == [a.base_url.encode()]
    a.refusing = True
    with pytest.raises(UpstreamUnavailable):
        await pool.each("/api/tags", 1.0)


async def test_a_single_server_is_always_tried_even_when_marked_down() -> None:
    only = FakeServer("only")
    pool = UpstreamPool([only])
    only.refusing = True
    with pytest.raises(UpstreamUnavailable):
        await send(pool)
    only.refusing = False

    assert await served_by(pool) == only.base_url
    assert pool.upstream_states()[0].online is True


async def test_start_lists_the_models_of_several_servers_before_the_first_request() -> None:
    a, b = servers(("a", ("smollm:latest",)), ("b", ("qwen:7b",)))
    pool = UpstreamPool([a, b], retry_interval=3600)
    await pool.start()
    try:
        assert await served_by(pool, "qwen:7b") == b.base_url
    finally:
        await pool.close()
