"""Who goes next to the GPU: the gateway's own queue in front of Ollama's few parallel slots.

Pure: time comes in as a value, and nothing here waits, sleeps or does I/O, so hypothesis can drive it.

- `SlotTable`: how many requests of one model each upstream runs at once (its slots), how many it runs
  now, and which upstream a request should go to (one with a free slot, preferring one that has the model
  loaded already, then the least busy).
- `FairQueue`: the requests waiting for a slot. When a slot for a model frees, the next request is
  1. one of the highest plan priority waiting for that model;
  2. among those, of the identity that received the least GPU time recently, scaled by its plan's
     weight (exponentially decayed, so being busy an hour ago costs nothing now);
  3. within that identity, the oldest.
  Bounded: `max_waiting` in all, `max_per_identity` per identity.

GPU time is charged to an identity when its request starts (an estimate: the identity's recent average
duration) and corrected when it ends, so that a user keeping several long generations busy is already
behind the others while they run. Usage values are compared at a common moment without touching every
identity: all decay by the same factor, so `log2(value) + at / half_life` orders them as their decayed
values do at any later time.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.model_names import model_key

DEFAULT_HALF_LIFE = 60.0
DEFAULT_ESTIMATE = 1.0  # seconds of GPU time a request is assumed to take before anything is known
_NEGLIGIBLE = 0.001  # seconds of decayed GPU time that no longer set an identity behind
_ESTIMATE_SMOOTHING = 0.3


@immutable
class Job:
    """A request that needs a slot."""

    id: int
    identity: str
    model: str  # as Ollama matches it (model_key)
    priority: int
    weight: float
    arrived: float


class Refusal(StrEnum):
    QUEUE_FULL = "queue_full"
    IDENTITY_FULL = "identity_full"


# -- slots ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class UpstreamSlots:
    """One upstream as the scheduler sees it. `slots` None: no limit of the gateway's (slots=0)."""

    name: str
    slots: int | None
    online: bool = True
    models: frozenset[str] | None = None  # None: not known yet, assumed to have every model
    loaded: frozenset[str] = frozenset()
    busy: dict[str, int] = field(default_factory=dict)

    def has(self, model: str) -> bool:
        return self.models is None or model in self.models

    def serves(self, model: str) -> bool:
        return self.online and self.has(model)

    def free(self, model: str) -> bool:
        return self.slots is None or self.busy.get(model, 0) < self.slots

    def has_loaded(self, model: str) -> bool:
        return model in self.loaded

    @property
    def total_busy(self) -> int:
        return sum(self.busy.values())


class SlotTable:
    """Every upstream's slots per model; `take` and `give_back` keep the counts exact."""

    def __init__(self, upstreams: Iterable[UpstreamSlots]) -> None:
        self.upstreams = {upstream.name: upstream for upstream in upstreams}
        self._order = list(self.upstreams)
        self._turn = 0  # ties go round, so that sequential traffic is spread too
        # One server, the common case: nothing to search or rank.
        self._only = self.upstreams[self._order[0]] if len(self._order) == 1 else None

    def serves(self, model: str) -> bool:
        """Whether any online upstream has the model: only then does a request wait for one of its slots
        (a model nobody has gets Ollama's own 404, an offline fleet its 503, without waiting)."""
        if self._only is not None:
            return self._only.serves(model)
        return any(u.serves(model) for u in self.upstreams.values())

    def candidates(self, model: str) -> list[str]:
        """The upstreams that could run `model` now, best first: a free slot, the model loaded, the
        fewest requests running, then in turn."""
        return self.ranked(model, free_only=True)

    def best_free(self, model: str) -> str | None:
        """The first of `candidates` (None: no free slot), without a list for one server."""
        only = self._only
        if only is not None:
            return only.name if only.serves(model) and only.free(model) else None
        candidates = self.candidates(model)
        return candidates[0] if candidates else None

    def ranked(self, model: str, free_only: bool = False) -> list[str]:
        """The online upstreams that have `model` (with a free slot, when `free_only`), best first."""
        only = self._only
        if only is not None:
            usable = only.serves(model) and (not free_only or only.free(model))
            return [only.name] if usable else []
        self._turn += 1
        count = len(self._order)
        ranked = [
            (not u.has_loaded(model), u.total_busy, (position - self._turn) % count, name)
            for position, name in enumerate(self._order)
            if (u := self.upstreams[name]).serves(model) and (u.free(model) or not free_only)
        ]
        return [name for *_, name in sorted(ranked)]

    def take(self, upstream: str, model: str) -> None:
        busy = self.upstreams[upstream].busy
        busy[model] = busy.get(model, 0) + 1

    def give_back(self, upstream: str, model: str) -> None:
        busy = self.upstreams[upstream].busy
        left = busy.get(model, 0) - 1
        if left > 0:
            busy[model] = left
        else:
            busy.pop(model, None)


# -- GPU time --------------------------------------------------------------------------------------------


class _Account:
    """One identity's GPU time: `value` seconds as of `at` (decaying from then on), and its usual request
    duration. Mutable, one per identity: a request's start and end each update it with one lookup."""

    __slots__ = ("at", "estimate", "value")

    def __init__(self, at: float) -> None:
        self.value = 0.0
        self.at = at
        self.estimate: float | None = None  # None until a request of the identity has ended

    def decayed(self, now: float, half_life: float) -> float:
        value = self.value
        # Most reads come at the moment of the last change (a request's start and end on an idle GPU
        # are charged at once): no power to compute then.
        return value * 2.0 ** ((self.at - now) / half_life) if value and now != self.at else value


class GpuTime:
    """Each identity's recent GPU time, decayed with `half_life`, and its usual request duration."""

    __slots__ = ("_accounts", "_next_sweep", "half_life")

    def __init__(self, half_life: float = DEFAULT_HALF_LIFE) -> None:
        self.half_life = half_life
        self._accounts: dict[str, _Account] = {}
        self._next_sweep = -math.inf

    def decayed(self, identity: str, now: float) -> float:
        account = self._accounts.get(identity)
        return account.decayed(now, self.half_life) if account is not None else 0.0

    def start(self, identity: str, now: float) -> float:
        """A request of `identity` starts: its usual duration is charged now (and returned), so that the
        identity is behind others while it runs."""
        account = self._account(identity, now)
        estimate = account.estimate if account.estimate is not None else DEFAULT_ESTIMATE
        account.value = account.decayed(now, self.half_life) + estimate
        account.at = now
        return estimate

    def settle(self, identity: str, started: float, charged: float, now: float) -> None:
        """The request that `start` charged `charged` for at `started` ended: the time it took replaces
        that estimate, and becomes part of the next one."""
        account = self._account(identity, now)
        half_life = self.half_life
        spent = now - started if now > started else 0.0
        value = account.decayed(now, half_life) + spent - charged * 2.0 ** (-spent / half_life)
        account.value = value if value > 0.0 else 0.0
        account.at = now
        old = account.estimate
        account.estimate = spent if old is None else old + _ESTIMATE_SMOOTHING * (spent - old)

    def _account(self, identity: str, now: float) -> _Account:
        """The identity's account; a new one (nothing used) for an identity never seen, or forgotten
        (idle for 30 half-lives, possibly while its last request ran)."""
        account = self._accounts.get(identity)
        if account is None:
            account = self._accounts[identity] = _Account(now)
        return account

    def key(self, identity: str, weight: float, now: float) -> float:
        """Orders identities as their decayed GPU time per weight does, at any moment from `now` on. What
        has decayed below a millisecond counts as nothing: those identities go by arrival."""
        account = self._accounts.get(identity)
        if account is None or account.decayed(now, self.half_life) < _NEGLIGIBLE:
            return -math.inf
        return math.log2(account.value / weight) + account.at / self.half_life

    def remembers(self, identity: str) -> bool:
        return identity in self._accounts

    def forget_idle(self, now: float) -> None:
        """Drop identities whose GPU time has decayed to nothing (bounded memory). A sweep visits every
        identity, so it runs at most once per half-life: memory stays bounded by the identities of about
        31 half-lives, and a request's end costs O(1). Called only while nobody waits, so that no
        waiting identity loses its place."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.half_life
        horizon = 30 * self.half_life
        for identity in [i for i, account in self._accounts.items() if now - account.at > horizon]:
            del self._accounts[identity]


# -- the queue -------------------------------------------------------------------------------------------


@immutable
class Running:
    """A job that holds a slot: what its end must give back and correct."""

    job: Job
    upstream: str
    started: float
    charged: float  # the estimate charged when it started


class FairQueue:
    """The waiting jobs, and the choice of the next one for a model (see the module's docstring)."""

    def __init__(
        self, max_waiting: int = 1000, max_per_identity: int = 8, half_life: float = DEFAULT_HALF_LIFE
    ) -> None:
        self.max_waiting = max_waiting
        self.max_per_identity = max_per_identity
        self.gpu = GpuTime(half_life)
        self._waiting: dict[tuple[str, str], deque[Job]] = {}  # (model, identity) -> jobs, oldest first
        self._per_identity: dict[str, int] = {}
        self._per_model: dict[str, int] = {}
        self._heaps: dict[str, list[tuple[int, float, float, int, int, str]]] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._tiebreak = itertools.count()
        self.waiting = 0

    # -- what waits --------------------------------------------------------------------------------

    def waiting_for(self, model: str) -> int:
        return self._per_model.get(model, 0)

    def waiting_of(self, identity: str) -> int:
        return self._per_identity.get(identity, 0)

    def models_waiting(self) -> list[str]:
        return [model for model, count in self._per_model.items() if count]

    def refusal(self, identity: str) -> Refusal | None:
        """Why a new job of `identity` cannot wait (None: it can)."""
        if self.waiting >= self.max_waiting:
            return Refusal.QUEUE_FULL
        if self._per_identity.get(identity, 0) >= self.max_per_identity:
            return Refusal.IDENTITY_FULL
        return None

    def enqueue(self, job: Job) -> None:
        """Add a job (`refusal` said it may wait)."""
        jobs = self._waiting.setdefault((job.model, job.identity), deque())
        jobs.append(job)
        self.waiting += 1
        self._per_identity[job.identity] = self._per_identity.get(job.identity, 0) + 1
        self._per_model[job.model] = self._per_model.get(job.model, 0) + 1
        if len(jobs) == 1:
            self._push(job.model, job.identity, job.arrived)

    def cancel(self, job: Job, now: float) -> bool:
        """Take a waiting job out (its client left, it timed out); False when it was not waiting."""
        jobs = self._waiting.get((job.model, job.identity))
        if not jobs or job not in jobs:
            return False
        was_head = jobs[0] is job
        jobs.remove(job)
        self._forget(job)
        if not jobs:
            del self._waiting[(job.model, job.identity)]
        elif was_head:
            self._push(job.model, job.identity, now)
        return True

    # -- who goes next -----------------------------------------------------------------------------

    def peek(self, model: str) -> Job | None:
        """The job that goes next for `model`, without taking it."""
        heap = self._heaps.get(model)
        while heap:
            *_, version, identity = heap[0]
            jobs = self._waiting.get((model, identity))
            if jobs and self._versions.get((model, identity)) == version:
                return jobs[0]
            heapq.heappop(heap)  # stale: that identity's state changed since
        return None

    def start(self, job: Job, upstream: str, now: float) -> Running:
        """`job` (the one `peek` gave, or a new one that never waited) takes a slot on `upstream`."""
        jobs = self._waiting.get((job.model, job.identity)) if self.waiting else None
        if jobs and jobs[0] is job:
            jobs.popleft()
            self._forget(job)
            if not jobs:
                del self._waiting[(job.model, job.identity)]
        charged = self.gpu.start(job.identity, now)
        if self.waiting:
            self._refresh(job.identity, now)
        return Running(job, upstream, now, charged)

    def finish(self, running: Running, now: float) -> None:
        """The job's request ended: its GPU time replaces the estimate charged when it started."""
        identity = running.job.identity
        self.gpu.settle(identity, running.started, running.charged, now)
        if self.waiting:
            self._refresh(identity, now)
        else:
            self.gpu.forget_idle(now)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _forget(self, job: Job) -> None:
        self.waiting -= 1
        self._decrement(self._per_identity, job.identity)
        self._decrement(self._per_model, job.model)

    @staticmethod
    def _decrement(counts: dict[str, int], key: str) -> None:
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]

    def _push(self, model: str, identity: str, now: float) -> None:
        jobs = self._waiting[(model, identity)]
        head = jobs[0]
        version = next(self._tiebreak)
        self._versions[(model, identity)] = version
        key = self.gpu.key(identity, head.weight, now)
        entry = (-head.priority, key, head.arrived, head.id, version, identity)
        heapq.heappush(self._heaps.setdefault(model, []), entry)

    def _refresh(self, identity: str, now: float) -> None:
        """The identity's GPU time changed: re-rank its heads wherever it waits (called only while some
        job waits)."""
        for model in self._per_model:  # only models with jobs waiting (counts of 0 are deleted)
            if (model, identity) in self._waiting:
                self._push(model, identity, now)


def next_grants(queue: FairQueue, slots: SlotTable, models: Sequence[str], now: float) -> list[Running]:
    """Give every free slot of `models` to the job that goes next (work-conserving: a slot is never left
    free while a job that could use it waits)."""
    granted = []
    for model in models:
        while (job := queue.peek(model)) is not None:
            upstream = slots.best_free(model)
            if upstream is None:
                break
            slots.take(upstream, model)
            granted.append(queue.start(job, upstream, now))
    return granted


def job_model(model: str | None) -> str:
    """The model a job waits for, as Ollama matches names ('' for a request that names none)."""
    return model_key(model) if model else ""
