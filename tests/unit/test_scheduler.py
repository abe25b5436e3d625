"""Who goes next to the GPU (domain/scheduler.py), driven by hypothesis through arrivals, ends and
cancellations at arbitrary times: slots never exceeded, never idle while someone waits, FIFO within an
identity, strict priority, no starvation within a priority, shares in proportion to weights."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.scheduler import (
    DEFAULT_ESTIMATE,
    FairQueue,
    GpuTime,
    Job,
    Running,
    SlotTable,
    UpstreamSlots,
    next_grants,
)

MODELS = ["smollm:latest", "llama3.2:1b"]


@dataclass
class World:
    """A queue and its slots, with the bookkeeping a test checks them against."""

    slots: SlotTable
    queue: FairQueue = field(default_factory=lambda: FairQueue(max_waiting=10_000, max_per_identity=10_000))
    running: list[Running] = field(default_factory=list)
    started: list[Job] = field(default_factory=list)
    now: float = 0.0
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def arrive(self, identity: str, model: str, priority: int = 1, weight: float = 1.0) -> Job:
        job = Job(next(self.ids), identity, model, priority, weight, self.now)
        if not self.queue.waiting_for(model) and (candidates := self.slots.candidates(model)):
            self.slots.take(candidates[0], model)
            self._started(self.queue.start(job, candidates[0], self.now))
        else:
            self.queue.enqueue(job)
        return job

    def end(self, running: Running) -> None:
        self.running.remove(running)
        self.slots.give_back(running.upstream, running.job.model)
        self.queue.finish(running, self.now)
        for granted in next_grants(self.queue, self.slots, [running.job.model], self.now):
            self._started(granted)

    def cancel(self, job: Job) -> None:
        self.queue.cancel(job, self.now)

    def _started(self, running: Running) -> None:
        self.running.append(running)
        self.started.append(running.job)

    def check(self) -> None:
        for upstream in self.slots.upstreams.values():
            for model in MODELS:
                busy = sum(1 for r in self.running if r.upstream == upstream.name and r.job.model == model)
                assert busy == upstream.busy.get(model, 0)
                assert upstream.slots is None or busy <= upstream.slots  # never more than its slots
            for model in MODELS:
                if self.queue.waiting_for(model) and upstream.has(model):
                    assert not upstream.free(model)  # work-conserving: no free slot while someone waits


def world(slots: list[int], models: list[tuple[str, ...] | None] | None = None) -> World:
    listed = models or [None] * len(slots)
    upstreams = [
        UpstreamSlots(f"gpu{n}", count, models=None if names is None else frozenset(names))
        for n, (count, names) in enumerate(zip(slots, listed, strict=True))
    ]
    return World(SlotTable(upstreams))


events = st.lists(
    st.one_of(
        st.tuples(
            st.just("arrive"),
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(MODELS),
            st.integers(0, 2),
            st.sampled_from([0.5, 1.0, 2.0, 4.0]),
        ),
        st.tuples(st.just("end"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.floats(0.01, 30.0)),
    ),
    max_size=150,
)
slot_layouts = st.lists(st.integers(1, 3), min_size=1, max_size=3)


@settings(deadline=None, max_examples=300)
@given(layout=slot_layouts, steps=events)
def test_slots_are_never_exceeded_nor_left_idle_and_each_identity_is_first_in_first_out(
    layout: list[int],
    steps: list[tuple],  # type: ignore[type-arg]
) -> None:
    w = world(layout)
    waiting: list[Job] = []
    for step in steps:
        if step[0] == "arrive":
            _, identity, model, priority, weight = step
            job = w.arrive(identity, model, priority, weight)
            if job not in w.started:
                waiting.append(job)
        elif step[0] == "end" and w.running:
            w.end(w.running[step[1] % len(w.running)])
        elif step[0] == "cancel" and waiting:
            job = waiting.pop(step[1] % len(waiting))
            if job not in w.started:
                w.cancel(job)
        elif step[0] == "tick":
            w.now += step[1]
        w.check()
    # Within one identity and model, jobs start in the order they arrived.
    for identity, model in itertools.product("abcd", MODELS):
        order = [job.id for job in w.started if job.identity == identity and job.model == model]
        assert order == sorted(order)


@settings(deadline=None, max_examples=200)
@given(
    arrivals=st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=60),
    priorities=st.fixed_dictionaries({name: st.integers(0, 2) for name in "abcde"}),
    slots=st.integers(1, 3),
)
def test_a_higher_priority_always_goes_first_and_nobody_starves_within_a_priority(
    arrivals: list[str], priorities: dict[str, int], slots: int
) -> None:
    """Everything arrives while the slots are busy, then the slots keep freeing: every job starts, and
    no job starts while a job of a higher priority (its identity's plan's) waits."""
    w = world([slots])
    for _ in range(slots):
        w.arrive("warm-up", MODELS[0], priority=9)  # the slots are busy
    jobs = [w.arrive(identity, MODELS[0], priorities[identity]) for identity in arrivals]
    while w.running:
        waiting_best = max((j.priority for j in jobs if j not in w.started), default=None)
        before = len(w.started)
        w.now += 1.0
        w.end(w.running[0])
        for job in w.started[before:]:
            assert waiting_best is None or job.priority == waiting_best
    assert all(job in w.started for job in jobs)  # no starvation


def test_a_light_user_is_served_after_at_most_one_of_a_flooding_users_requests() -> None:
    w = world([1])
    flood = [w.arrive("heavy", MODELS[0]) for _ in range(20)]
    w.now += 0.1
    light = w.arrive("light", MODELS[0])
    for _ in range(3):
        w.now += 2.0
        w.end(w.running[0])
    position = w.started.index(light)
    assert w.started[:position] == flood[:position]
    assert position <= 2  # the one running when it arrived, at most one more


def test_a_member_goes_before_an_anonymous_flood() -> None:
    w = world([2])
    for n in range(30):
        w.arrive(f"ip:{n % 5}", MODELS[0], priority=0)
    member = w.arrive("user:alice", MODELS[0], priority=1)
    w.now += 1.0
    w.end(w.running[0])
    assert w.started[-1] == member


@settings(deadline=None, max_examples=60)
@given(
    weights=st.tuples(st.sampled_from([1.0, 2.0, 3.0]), st.sampled_from([1.0, 2.0, 3.0])),
    duration=st.sampled_from([0.2, 1.0, 3.0]),
    slots=st.integers(1, 2),
)
def test_under_saturation_service_follows_the_weights(
    weights: tuple[float, float], duration: float, slots: int
) -> None:
    """Two identities that always have requests waiting: GPU time splits in proportion to their weights."""
    w = world([slots])
    served: Counter[str] = Counter()
    backlog = {"x": 0, "y": 0}
    for identity, weight in zip("xy", weights, strict=True):
        for _ in range(4):
            w.arrive(identity, MODELS[0], weight=weight)
            backlog[identity] += 1
    for _ in range(600):
        w.now += duration / slots
        ending = w.running[0]
        served[ending.job.identity] += 1
        w.end(ending)
        identity = ending.job.identity
        w.arrive(identity, MODELS[0], weight=weights["xy".index(identity)])  # keep both saturated
    share = served["x"] / (served["x"] + served["y"])
    expected = weights[0] / (weights[0] + weights[1])
    assert abs(share - expected) < 0.06, (share, expected)


def test_the_upstream_that_has_the_model_loaded_is_preferred_then_the_least_busy() -> None:
    slots = SlotTable(
        [
            UpstreamSlots("gpu0", 2, loaded=frozenset()),
            UpstreamSlots("gpu1", 2, loaded=frozenset({MODELS[1]})),
            UpstreamSlots("gpu2", 2, loaded=frozenset()),
        ]
    )
    assert slots.candidates(MODELS[1])[0] == "gpu1"
    slots.take("gpu0", MODELS[0])
    assert slots.candidates(MODELS[0])[-1] == "gpu0"  # least busy first
    slots.take("gpu1", MODELS[1])
    slots.take("gpu1", MODELS[1])
    assert slots.candidates(MODELS[1])[0] == "gpu2"  # loaded but full


def test_ties_go_round_so_sequential_traffic_is_spread() -> None:
    slots = SlotTable([UpstreamSlots(f"gpu{n}", 2) for n in range(3)])
    firsts = Counter(slots.candidates(MODELS[0])[0] for _ in range(30))
    assert firsts == Counter({"gpu0": 10, "gpu1": 10, "gpu2": 10})


def test_only_upstreams_that_have_the_model_and_are_online_take_it() -> None:
    slots = SlotTable(
        [UpstreamSlots("gpu0", 1, models=frozenset({MODELS[0]})), UpstreamSlots("gpu1", 1, online=False)]
    )
    assert slots.candidates(MODELS[1]) == []
    assert not slots.serves(MODELS[1])  # nobody online has it: it goes through unqueued (Ollama's 404)
    assert slots.serves(MODELS[0])


def test_bounds_refuse_what_cannot_wait() -> None:
    queue = FairQueue(max_waiting=3, max_per_identity=2)
    jobs = [Job(n, identity, MODELS[0], 1, 1.0, 0.0) for n, identity in enumerate("aab")]
    for job in jobs:
        assert queue.refusal(job.identity) is None
        queue.enqueue(job)
    assert queue.refusal("a") is not None and queue.refusal("c") is not None  # full
    queue.cancel(jobs[2], 0.0)
    assert queue.refusal("a").value == "identity_full"  # type: ignore[union-attr]
    assert queue.refusal("c") is None


def test_gpu_time_decays_so_old_use_is_forgiven() -> None:
    w = world([1])
    w.arrive("old", MODELS[0])
    w.now += 600.0  # ten minutes of generation
    w.end(w.running[0])
    w.now += 3600.0  # an hour later
    w.arrive("new", MODELS[0])  # takes the slot
    old, newer = w.arrive("old", MODELS[0]), w.arrive("newer", MODELS[0])
    w.now += 1.0
    w.end(w.running[0])
    assert w.started[-1] == old  # arrived first; its hour-old use no longer counts against it
    assert newer not in w.started


def test_identities_whose_gpu_time_decayed_away_are_forgotten() -> None:
    """Memory is bounded by recent identities: a sweep (at most once per half-life, so that a request's
    end stays O(1)) drops those idle for 30 half-lives, and keeps the recent ones."""
    world = World(SlotTable([UpstreamSlots("gpu", 1)]), FairQueue(half_life=1.0))
    for index in range(500):
        world.arrive(f"old-{index}", MODELS[0])
        world.now += 0.01
        world.end(world.running[0])
    assert world.queue.gpu.decayed("old-0", world.now) > 0

    world.now += 31.0
    world.arrive("recent", MODELS[0])
    world.now += 0.5
    world.end(world.running[0])
    world.now += 1.0  # past the next sweep
    world.arrive("newer", MODELS[0])
    world.end(world.running[0])

    gpu = world.queue.gpu
    assert not any(gpu.remembers(f"old-{index}") for index in range(500))
    assert gpu.remembers("recent") and gpu.remembers("newer")


@settings(deadline=None, max_examples=200)
@given(
    requests=st.lists(
        st.tuples(st.floats(0.0, 120.0), st.floats(0.0, 600.0)),  # (idle before it, time it ran)
        min_size=1,
        max_size=20,
    ),
    after=st.floats(0.0, 600.0),
)
def test_gpu_time_is_exactly_the_decayed_time_spent_once_requests_end(
    requests: list[tuple[float, float]], after: float
) -> None:
    """The estimate charged when a request starts is taken back in full when it ends: what is left is
    the time each request ran, decayed from its end."""
    gpu, now, spent = GpuTime(half_life=60.0), 0.0, []
    for idle, ran in requests:
        now += idle
        charged = gpu.start("alice", now)
        started, now = now, now + ran
        gpu.settle("alice", started, charged, now)
        spent.append((now, ran))
    now += after
    expected = sum(ran * 2.0 ** (-(now - ended) / 60.0) for ended, ran in spent)
    assert gpu.decayed("alice", now) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_the_first_estimate_is_the_default_then_follows_the_durations() -> None:
    gpu = GpuTime()
    assert gpu.start("bob", 0.0) == DEFAULT_ESTIMATE
    gpu.settle("bob", 0.0, DEFAULT_ESTIMATE, 4.0)
    assert gpu.start("bob", 4.0) == 4.0  # the first duration, as it was
    gpu.settle("bob", 4.0, 4.0, 6.0)
    assert gpu.start("bob", 6.0) == pytest.approx(4.0 + 0.3 * (2.0 - 4.0))  # smoothed from then on


@pytest.mark.parametrize("online", [True, False])
def test_one_server_is_best_free_while_it_is_online_has_the_model_and_a_slot(online: bool) -> None:
    only = UpstreamSlots("gpu0", 1, online=online, models=frozenset({MODELS[0]}))
    slots = SlotTable([only])
    assert slots.serves(MODELS[0]) is online and not slots.serves(MODELS[1])
    assert slots.best_free(MODELS[0]) == ("gpu0" if online else None)
    assert slots.best_free(MODELS[1]) is None
    slots.take("gpu0", MODELS[0])
    assert slots.best_free(MODELS[0]) is None  # its one slot is busy
    assert slots.candidates(MODELS[0]) == []


def test_best_free_of_several_servers_is_the_first_candidate() -> None:
    slots = SlotTable(
        [
            UpstreamSlots("gpu0", 1, loaded=frozenset()),
            UpstreamSlots("gpu1", 1, loaded=frozenset({MODELS[0]})),
        ]
    )
    assert slots.best_free(MODELS[0]) == "gpu1"  # loaded first
    slots.take("gpu1", MODELS[0])
    assert slots.best_free(MODELS[0]) == "gpu0"
    slots.take("gpu0", MODELS[0])
    assert slots.best_free(MODELS[0]) is None
