"""The composition root: the only place that knows every concrete class."""

from __future__ import annotations

from dependency_injector import containers, providers
from ollama_gate.adapters.memory_ratelimit import InMemoryRateLimiter
from ollama_gate.adapters.ollama_http import OllamaHttpBackend
from ollama_gate.adapters.psutil_metrics import PsutilMetrics
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.stores import SqlKeyStore, SqlUsageStore
from ollama_gate.adapters.system_clock import SystemClock
from ollama_gate.entrypoints.config import Settings
from ollama_gate.services.access import AccessPolicy
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.chat import ChatService
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.keys import KeyService
from ollama_gate.services.periodic import Periodic
from ollama_gate.services.status import StatusService
from ollama_gate.services.usage_recorder import UsageRecorder
from ollama_gate.services.usage_reports import UsageReports


class Container(containers.DeclarativeContainer):
    """Tests override any provider with a fake: `container.llm.override(providers.Object(fake))`."""

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    metrics = providers.Singleton(PsutilMetrics)
    database = providers.Singleton(
        Database, url=settings.provided.database_url, connect_timeout=settings.provided.connect_timeout
    )
    key_store = providers.Singleton(SqlKeyStore, database)
    usage_store = providers.Singleton(SqlUsageStore, database)
    llm = providers.Singleton(
        OllamaHttpBackend,
        base_url=settings.provided.ollama_url,
        connect_timeout=settings.provided.connect_timeout,
        read_timeout=settings.provided.read_timeout,
    )
    rate_limiter = providers.Singleton(InMemoryRateLimiter, clock)

    usage_recorder = providers.Singleton(UsageRecorder, usage_store)
    authenticator = providers.Singleton(Authenticator, key_store, clock)
    gatekeeper = providers.Singleton(
        Gatekeeper,
        authenticator,
        rate_limiter,
        anonymous_rate=settings.provided.anon_rate_limit,
        member_rate=settings.provided.member_rate_limit,
    )
    access = providers.Singleton(AccessPolicy, authenticator, admin_token=settings.provided.admin_token)
    chat = providers.Singleton(
        ChatService, llm, usage_recorder, clock, default_model=settings.provided.default_model
    )
    keys = providers.Singleton(KeyService, key_store, authenticator, clock)
    usage_reports = providers.Singleton(UsageReports, usage_store)
    status = providers.Singleton(StatusService, llm, metrics, usage_store, usage_recorder, gatekeeper, clock)
    last_used_writer = providers.Singleton(
        Periodic, "last-used-writer", authenticator.provided.flush_last_used, interval=5.0
    )

    # Started in this order with the app, closed in reverse: the usage writer drains before the
    # database closes.
    lifecycle = providers.List(database, llm, usage_recorder, last_used_writer)


def build_container(settings: Settings) -> Container:
    container = Container()
    container.settings.override(providers.Object(settings))
    return container
