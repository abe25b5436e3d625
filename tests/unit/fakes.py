"""In-memory fakes of the ports the adapters module does not already provide."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ollama_gate.adapters.memory_quota import InMemoryQuotaLimiter
from ollama_gate.adapters.memory_stores import InMemoryKeyStore, InMemoryPlanStore
from ollama_gate.domain.errors import UpstreamUnavailable
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.plans import Plan
from ollama_gate.domain.quota import Admission, Limits
from ollama_gate.domain.status import ModelInfo
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.ports.metrics import SystemSnapshot
from ollama_gate.ports.slots import Claim, SharedSlotsUnavailable
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.gatekeeper import Gatekeeper, Ticket
from ollama_gate.services.plans import PlanBook


class FakeClock:
    """Time moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.seconds = start
        self.epoch = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.epoch + timedelta(seconds=self.seconds)

    def time(self) -> float:
        return self.epoch.timestamp() + self.seconds

    def monotonic(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


class FakeMetrics:
    def snapshot(self) -> SystemSnapshot:
        return SystemSnapshot(ram_total_gb=8.0, ram_used_gb=5.2, ram_percent=65.0, cpu_percent=12.5)


class ScriptedResponse:
    """An upstream response with a fixed status and body lines; can fail after some lines."""

    def __init__(
        self, status: int, lines: list[bytes], fail_after: int | None = None, error: Exception | None = None
    ) -> None:
        self.status = status
        self._lines = lines
        self._fail_after = fail_after
        self._error = error
        self.closed = False

    async def read(self) -> bytes:
        return b"\n".join(self._lines)

    async def lines(self) -> AsyncIterator[bytes]:
        for index, line in enumerate(self._lines):
            if self._fail_after is not None and index == self._fail_after and self._error is not None:
                raise self._error
            await asyncio.sleep(0)
            yield line + b"\n"  # as the port says: each line with its newline

    def close(self) -> None:
        self.closed = True


class FakeLLM:
    """Answers `post` with what `respond(path, body)` returns; records every call."""

    def __init__(self, respond: Callable[[str, bytes], ScriptedResponse] | None = None) -> None:
        self.respond = respond
        self.calls: list[tuple[str, bytes]] = []
        self.responses: list[ScriptedResponse] = []
        self.models_list: list[ModelInfo] = [ModelInfo("smollm:latest", 990_000_000)]
        self.online = True
        self.model_calls = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def post(self, path: str, body: bytes, upstream: str | None = None) -> ScriptedResponse:
        self.calls.append((path, body))
        if not self.online or self.respond is None:
            raise UpstreamUnavailable("Ollama is offline")
        response = self.respond(path, body)
        self.responses.append(response)
        return response

    async def models(self, timeout: float) -> list[ModelInfo]:
        self.model_calls += 1
        if not self.online:
            raise UpstreamUnavailable("Ollama is offline")
        return list(self.models_list)


class FakeSharedSlots:
    """SharedSlots in memory, as Redis holds them: leases per (upstream, model). With `hold`, answers wait
    for `answer()` (a round trip in flight); `down` answers SharedSlotsUnavailable."""

    def __init__(self, hold: bool = False) -> None:
        self.leases: dict[tuple[str, str], set[str]] = {}
        self.hold = hold
        self.down = False
        self.asked = 0
        self.most_held = 0
        self._pending: list[Callable[[], None]] = []
        self._freed: list[Callable[[str], None]] = []

    @property
    def held(self) -> int:
        return sum(len(leases) for leases in self.leases.values())

    def take(
        self, model: str, claim: Claim, upstreams: Sequence[tuple[str, int | None, bool]]
    ) -> asyncio.Future[str | None]:
        self.asked += 1
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def decide() -> None:
            if self.down:
                if not answer.done():
                    answer.set_exception(SharedSlotsUnavailable())
                return
            taken = None
            for name, slots, _ in upstreams:
                leases = self.leases.setdefault((name, model), set())
                if slots is None or len(leases) < slots:
                    leases.add(claim.lease)
                    self.most_held = max(self.most_held, self.held)
                    taken = name
                    break
            if answer.done():  # cancelled while asking: what it took goes back
                if taken is not None:
                    self.give_back(taken, model, claim.lease)
            else:
                answer.set_result(taken)

        if self.hold:
            self._pending.append(decide)
        else:
            decide()
        return answer

    def answer(self) -> None:
        pending, self._pending = self._pending, []
        for decide in pending:
            decide()

    def give_back(self, upstream: str, model: str, lease: str) -> None:
        self.leases.get((upstream, model), set()).discard(lease)
        for callback in self._freed:
            callback(model)

    def advertise(self, model: str, head: Claim | None) -> None:
        return None

    def on_freed(self, callback: Callable[[str], None]) -> None:
        self._freed.append(callback)

    async def busy(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int] | None:
        return {pair: len(self.leases.get(pair, ())) for pair in pairs}


def ticket(caller: Caller, plan: Plan | None = None) -> Ticket:
    """An admitted request's ticket on `plan` (default: the caller's plan as named, with no limits), as
    the gatekeeper hands it to the services."""
    plan = plan or Plan(caller.plan or "member")
    clock = FakeClock()
    keys = InMemoryKeyStore()
    book = PlanBook(InMemoryPlanStore(keys), {plan.name: plan})
    gatekeeper = Gatekeeper(Authenticator(keys, clock), InMemoryQuotaLimiter(clock), book)
    return Ticket(gatekeeper, caller, plan, Admission(True, Limits.of(plan), ()))


def usage_record(timestamp: datetime, **fields: Any) -> UsageRecord:
    """A usage row of a member's /chat that went well; a test names only the fields it varies."""
    row: dict[str, Any] = {
        "user": "alice",
        "tier": Tier.MEMBER,
        "key_id": None,
        "client_ip": "10.0.0.1",
        "endpoint": "/chat",
        "model": "smollm:latest",
        "status": 200,
        "outcome": Outcome.OK,
        "latency_ms": 1.0,
        "prompt_tokens": None,
        "completion_tokens": None,
    }
    return UsageRecord(timestamp=timestamp, **{**row, **fields})
