"""The Redis pipeliner keeps answering whatever a pipeline does: calls get a result or an error, in order,
and a failure nobody foresaw fails its batch like an outage instead of ending the sender."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import pytest

from ollama_gate.adapters.redis_writes import REDIS_DOWN, PipelinedWrites


class Script:
    sha = "0" * 40


class Pipeline:
    def __init__(self, client: FakeClient) -> None:
        self._client = client
        self._sent: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        return None

    def evalsha(self, sha: str, count: int, *values: Any) -> None:
        self._sent.append(values)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        failure = self._client.failures.pop(0) if self._client.failures else None
        if failure is not None:
            raise failure
        self._client.pipelines.append(self._sent)
        return [f"ok:{values[0]}" for values in self._sent]


class FakeClient:
    def __init__(self, *failures: BaseException) -> None:
        self.failures: list[BaseException] = list(failures)
        self.pipelines: list[list[tuple[Any, ...]]] = []

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self)


async def test_calls_are_answered_in_order_many_to_a_pipeline() -> None:
    client = FakeClient()
    writes = PipelinedWrites(client, "test")  # type: ignore[arg-type]
    writes.queue(Script(), ["w"], [1])
    calls = [writes.submit(Script(), [f"k{n}"], [n]) for n in range(5)]
    assert await asyncio.gather(*calls) == [f"ok:k{n}" for n in range(5)]
    assert len(client.pipelines) == 1 and client.pipelines[0][0] == ("w", 1)  # the write went first
    await writes.close()


@pytest.mark.parametrize("failure", [RuntimeError("a driver bug"), ConnectionError("refused")])
async def test_a_failed_pipeline_fails_its_calls_as_an_outage_and_the_next_ones_are_served(
    failure: BaseException,
) -> None:
    client = FakeClient(failure)
    writes = PipelinedWrites(client, "test")  # type: ignore[arg-type]
    first = writes.submit(Script(), ["a"], [])
    with pytest.raises(REDIS_DOWN):
        await asyncio.wait_for(first, 1)
    later = writes.submit(Script(), ["b"], [])
    assert await asyncio.wait_for(later, 1) == "ok:b"  # the sender is still there
    await writes.close()


async def test_a_call_after_closing_fails_at_once() -> None:
    writes = PipelinedWrites(FakeClient(), "test")  # type: ignore[arg-type]
    writes.start()
    await writes.close()
    with pytest.raises(REDIS_DOWN):
        await asyncio.wait_for(writes.submit(Script(), ["a"], []), 1)
