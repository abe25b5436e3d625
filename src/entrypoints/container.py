"""The composition root: the only place that knows every concrete class."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from ollama_gate.adapters.local_cluster import LocalKeyEvents, NoSharedCounters
from ollama_gate.adapters.memory_quota import InMemoryQuotaLimiter
from ollama_gate.adapters.ollama_http import OllamaHttpBackend
from ollama_gate.adapters.prometheus_telemetry import MULTIPROCESS_DIR, PrometheusTelemetry, worker_exited
from ollama_gate.adapters.psutil_metrics import PsutilMetrics
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.plan_store import SqlPlanStore
from ollama_gate.adapters.sql.stores import SqlKeyStore, SqlUsageStore
from ollama_gate.adapters.system_clock import SystemClock
from ollama_gate.adapters.upstream_pool import UpstreamPool
from ollama_gate.domain.console_session import generated_secret
from ollama_gate.domain.plans import Plan, builtin_plans
from ollama_gate.entrypoints.config import Settings
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.cluster import KeyEvents, SharedCounters
from ollama_gate.ports.quota import QuotaLimiter
from ollama_gate.ports.slots import SharedSlots
from ollama_gate.services.access import AccessPolicy
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.chat import ChatService
from ollama_gate.services.console import ConsoleSessions, UsageCharts
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.gauges import GaugeSampler
from ollama_gate.services.gpu_queue import GpuQueue
from ollama_gate.services.keys import KeyService
from ollama_gate.services.passthrough import PassthroughService
from ollama_gate.services.periodic import Periodic
from ollama_gate.services.plans import PlanBook
from ollama_gate.services.status import StatusService
from ollama_gate.services.usage_recorder import UsageRecorder
from ollama_gate.services.usage_reports import UsageReports

# The Redis adapters (and redis-py, 6 MB of RSS) are imported only when Redis is configured.
if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ollama_gate.adapters.redis_writes import PipelinedWrites

# Connections to Redis per process. A burst waits for a free one (a bounded wait) rather than opening
# one per request: redis-py's default pool raises when full, which the limiter took for an outage.
REDIS_MAX_CONNECTIONS = 50
REDIS_POOL_WAIT = 2.0


def _redis_client(settings: Settings) -> aioredis.Redis | None:
    if settings.redis_url is None:
        return None
    import redis.asyncio as aioredis

    # Short socket timeouts: an unreachable Redis must cost a request milliseconds, not seconds.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_POOL_WAIT,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        health_check_interval=10,
    )
    return aioredis.Redis.from_pool(pool)


def _redis_scripts(client: aioredis.Redis | None) -> PipelinedWrites | None:
    """One pipeline for the limiter's and the GPU slots' scripts: a request's admission and its slot go
    to Redis in one round trip (and everyone's, under load, in a few)."""
    if client is None:
        return None
    from ollama_gate.adapters.redis_writes import PipelinedWrites

    return PipelinedWrites(client, "Redis scripts")


def _quota_limiter(
    settings: Settings, clock: Clock, client: aioredis.Redis | None, scripts: PipelinedWrites | None
) -> QuotaLimiter:
    local = InMemoryQuotaLimiter(clock)
    if client is None:
        return local
    from ollama_gate.adapters.redis_quota import RedisQuotaLimiter

    fallback = local if settings.rate_limit_fallback == "local" else None
    return RedisQuotaLimiter(client, clock, fallback, lease_ttl=settings.lease_seconds, writes=scripts)


def _shared_slots(
    settings: Settings, client: aioredis.Redis | None, scripts: PipelinedWrites | None
) -> SharedSlots | None:
    if client is None:
        return None
    from ollama_gate.adapters.redis_slots import RedisSharedSlots

    return RedisSharedSlots(client, lease_ttl=settings.lease_seconds, writes=scripts)


def _online_of(database: Database) -> Callable[[], bool]:
    return lambda: database.online


def _shared_limiter(limiter: QuotaLimiter) -> QuotaLimiter | None:
    """The limiter when it is Redis's (its health is the Redis dependency's), else None."""
    return limiter if limiter.backend == "redis" else None


def _builtin_plans(settings: Settings) -> dict[str, Plan]:
    return builtin_plans(settings.anon_rate_limit, settings.member_rate_limit)


def _console_secret(settings: Settings) -> bytes:
    """The key the console signs its sessions with: OLLAMA_GATE_CONSOLE_SECRET, or one made now (the
    sessions then end when the process does)."""
    return settings.console_secret.encode() if settings.console_secret else generated_secret()


def _session_seconds(settings: Settings) -> float:
    return settings.console_session_hours * 3600


def _uses_redis(settings: Settings) -> bool:
    return settings.redis_url is not None


def _shared_counters(client: aioredis.Redis | None) -> SharedCounters:
    if client is None:
        return NoSharedCounters()
    from ollama_gate.adapters.redis_cluster import RedisCounters

    return RedisCounters(client)


def _key_events(client: aioredis.Redis | None) -> KeyEvents:
    if client is None:
        return LocalKeyEvents()
    from ollama_gate.adapters.redis_cluster import RedisKeyEvents

    return RedisKeyEvents(client)


def _ollama_servers(settings: Settings) -> UpstreamPool:
    backends = [
        OllamaHttpBackend(upstream.url, settings.connect_timeout, settings.read_timeout, upstream.name)
        for upstream in settings.upstreams
    ]
    return UpstreamPool(backends)


class _RedisConnection:
    """Closes the shared Redis client last-but-one, after everything that uses it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()


class _RedisScripts:
    """Starts the shared script pipeline before its users, and closes it after them: what they queue
    while closing (the last ends, heads withdrawn) still goes out."""

    def __init__(self, scripts: PipelinedWrites) -> None:
        self._scripts = scripts

    async def start(self) -> None:
        self._scripts.start()

    async def close(self) -> None:
        await self._scripts.close()


def _lifecycle(
    redis_client: aioredis.Redis | None,
    redis_scripts: PipelinedWrites | None,
    key_events: KeyEvents,
    shared_counters: SharedCounters,
    limiter: QuotaLimiter,
    shared_slots: SharedSlots | None,
    authenticator: Authenticator,
    *components: Any,
) -> list[Any]:
    """What the app starts in order and closes in reverse: the database first, then what shares Redis
    (closed before the Redis connection), then the rest."""
    key_events.subscribe(authenticator.forget)
    managed: list[Any] = []
    if redis_client is not None:
        from ollama_gate.adapters.redis_cluster import RedisCounters, RedisKeyEvents
        from ollama_gate.adapters.redis_quota import RedisQuotaLimiter
        from ollama_gate.adapters.redis_slots import RedisSharedSlots

        managed.append(_RedisConnection(redis_client))
        if redis_scripts is not None:
            managed.append(_RedisScripts(redis_scripts))
        redis_parts = (RedisKeyEvents, RedisCounters, RedisQuotaLimiter, RedisSharedSlots)
        managed += [
            c for c in (key_events, shared_counters, limiter, shared_slots) if isinstance(c, redis_parts)
        ]
    return [*components[:1], *managed, *components[1:]]


class Container(containers.DeclarativeContainer):
    """Tests override any provider with a fake: `container.llm.override(providers.Object(fake))`."""

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    metrics = providers.Singleton(PsutilMetrics)
    database = providers.Singleton(
        Database,
        url=settings.provided.database_url,
        connect_timeout=settings.provided.connect_timeout,
        auto_migrate=settings.provided.auto_migrate,
        query_timeout=settings.provided.database_timeout,
    )
    key_store = providers.Singleton(SqlKeyStore, database)
    plan_store = providers.Singleton(SqlPlanStore, database)
    usage_store = providers.Singleton(SqlUsageStore, database)
    # Every OLLAMA_GATE_OLLAMA_URL server behind one LLMBackend/LLMRouter (one server: no model routing).
    llm = providers.Singleton(_ollama_servers, settings)
    redis_client = providers.Singleton(_redis_client, settings)
    redis_scripts = providers.Singleton(_redis_scripts, redis_client)
    limiter = providers.Singleton(_quota_limiter, settings, clock, redis_client, redis_scripts)
    shared_counters = providers.Singleton(_shared_counters, redis_client)
    key_events = providers.Singleton(_key_events, redis_client)

    # One telemetry per process; its model labels are bounded by what the servers list.
    telemetry = providers.Singleton(PrometheusTelemetry, known_models=llm.provided.known_models)
    metrics_exposition = telemetry
    usage_recorder = providers.Singleton(
        UsageRecorder,
        usage_store,
        clock,
        flush_interval=settings.provided.usage_flush_seconds,
        telemetry=telemetry,
    )
    authenticator = providers.Singleton(
        Authenticator, key_store, clock, lookup_timeout=settings.provided.database_timeout
    )
    plans = providers.Singleton(PlanBook, plan_store, providers.Callable(_builtin_plans, settings))
    gatekeeper = providers.Singleton(
        Gatekeeper,
        authenticator,
        limiter,
        plans,
        shared_counters=shared_counters,
        admin_token=settings.provided.admin_token,
        listing_window=settings.provided.listing_rate_limit,
        ipv6_prefix=settings.provided.ipv6_prefix,
        telemetry=telemetry,
    )
    access = providers.Singleton(AccessPolicy, authenticator, admin_token=settings.provided.admin_token)
    shared_slots = providers.Singleton(_shared_slots, settings, redis_client, redis_scripts)
    gpu_queue = providers.Singleton(
        GpuQueue,
        llm,
        clock,
        slots_of=settings.provided.slots_of.call(),
        max_waiting=settings.provided.max_queue,
        max_per_identity=settings.provided.max_queued_per_identity,
        shared=shared_slots,
        telemetry=telemetry,
    )
    chat = providers.Singleton(
        ChatService, llm, usage_recorder, clock, default_model=settings.provided.default_model, gpu=gpu_queue
    )
    passthrough = providers.Singleton(PassthroughService, llm, usage_recorder, clock, gpu=gpu_queue)
    keys = providers.Singleton(KeyService, key_store, authenticator, clock, key_events)
    usage_reports = providers.Singleton(UsageReports, usage_store)
    usage_charts = providers.Singleton(UsageCharts, usage_store, clock)
    console_sessions = providers.Singleton(
        ConsoleSessions,
        authenticator,
        key_store,
        clock,
        secret=providers.Callable(_console_secret, settings),
        admin_token=settings.provided.admin_token,
        lifetime=providers.Callable(_session_seconds, settings),
    )
    status = providers.Singleton(
        StatusService,
        llm,
        metrics,
        usage_store,
        usage_recorder,
        gatekeeper,
        clock,
        gpu=gpu_queue,
        shares_state=providers.Callable(_uses_redis, settings),
    )
    last_used_writer = providers.Singleton(
        Periodic, "last-used-writer", authenticator.provided.flush_last_used, interval=5.0
    )
    # Edits made on another instance (or with the CLI) reach this one within half a second.
    plan_refresher = providers.Singleton(Periodic, "plan-refresh", plans.provided.refresh, interval=0.5)
    gauges = providers.Singleton(
        GaugeSampler,
        telemetry,
        llm,
        gpu_queue,
        usage_recorder,
        database_online=providers.Callable(_online_of, database),
        shared_limiter=providers.Callable(_shared_limiter, limiter),
    )
    gauge_sampler = providers.Singleton(Periodic, "gauges", gauges.provided.sample, interval=1.0)

    # Started in this order with the app, closed in reverse: the usage writer drains before the
    # database closes.
    lifecycle = providers.Singleton(
        _lifecycle,
        redis_client,
        redis_scripts,
        key_events,
        shared_counters,
        limiter,
        shared_slots,
        authenticator,
        database,
        plans,
        llm,
        usage_recorder,
        last_used_writer,
        plan_refresher,
        gauge_sampler,
    )


def prepare_worker_metrics() -> Callable[[int], None]:
    """Before `serve --workers N` starts its workers: a fresh directory for prometheus_client's
    multiprocess mode (every worker reads the variable at start); returns what to call when a worker
    exits. The directory lives as long as the supervisor."""
    directory = tempfile.mkdtemp(prefix="ollama-gate-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    atexit.register(shutil.rmtree, directory, True)
    return worker_exited


def build_container(settings: Settings) -> Container:
    container = Container()
    container.settings.override(providers.Object(settings))
    return container
