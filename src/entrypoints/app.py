"""The Litestar application factory."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import HttpMethod, Litestar, Response, route
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template import TemplateConfig

from ollama_gate import __version__
from ollama_gate.entrypoints.access_log import AccessLog
from ollama_gate.entrypoints.config import load_settings
from ollama_gate.entrypoints.console.pages import console_router
from ollama_gate.entrypoints.console.web import TEMPLATES
from ollama_gate.entrypoints.container import Container, build_container
from ollama_gate.entrypoints.controllers import ollama_api, openai_api, plans
from ollama_gate.entrypoints.controllers.chat import chat, chat_stream
from ollama_gate.entrypoints.controllers.keys import create_key, list_keys, revoke_key
from ollama_gate.entrypoints.controllers.status import status
from ollama_gate.entrypoints.controllers.usage import export_usage, list_usage, usage_summary
from ollama_gate.entrypoints.direct_routes import DirectRoutes
from ollama_gate.entrypoints.heap import settle_after_startup
from ollama_gate.entrypoints.http_errors import exception_handlers
from ollama_gate.entrypoints.log_setup import configure_logging
from ollama_gate.entrypoints.metrics import RequestMetrics, metrics
from ollama_gate.entrypoints.openapi_contract import complete_document
from ollama_gate.entrypoints.request_context import decided_client_ip
from ollama_gate.entrypoints.request_edge import RequestEdge
from ollama_gate.entrypoints.request_ids import RequestIds

log = logging.getLogger("ollama_gate")


def _options_handler(path: str, methods: set[str]) -> HTTPRouteHandler:
    allow = ", ".join(sorted(methods | {"OPTIONS"}))

    @route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, sync_to_thread=False)
    def options() -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": allow}, media_type="text/plain")

    return options


def with_options(handlers: Sequence[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """`handlers`, with an OPTIONS handler of our own for each path that several of them share.

    Litestar registers handlers one at a time: the first at a path gets an OPTIONS handler whose `Allow`
    lists the methods of the route as it was then, and the route rebuilt for the next handler keeps that
    OPTIONS handler, so `OPTIONS /api/keys` would say `POST, OPTIONS` without GET. An OPTIONS handler that
    is there first, with every method of the path, leaves Litestar nothing to create.
    """
    methods: dict[str, set[str]] = defaultdict(set)
    count: dict[str, int] = defaultdict(int)
    for handler in handlers:
        for path in handler.paths:
            methods[path] |= set(handler.http_methods)
            count[path] += 1
    shared = [_options_handler(path, methods[path]) for path in methods if count[path] > 1]
    return [*shared, *handlers]


def create_app(container: Container) -> Litestar:
    """An app wired to `container`; tests pass a container whose providers they have overridden."""
    settings = container.settings()

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        started: list[Any] = []
        try:
            for component in container.lifecycle():
                await component.start()
                started.append(component)
            settle_after_startup()
            yield
        finally:
            # Reverse order: in-flight requests are already drained by the server, then the usage
            # writer flushes before the database closes.
            for component in reversed(started):
                try:
                    await component.close()
                except Exception:
                    log.exception("error while closing %s", type(component).__name__)

    app = Litestar(
        route_handlers=[
            *with_options(
                [
                    chat,
                    chat_stream,
                    create_key,
                    list_keys,
                    revoke_key,
                    list_usage,
                    usage_summary,
                    export_usage,
                    status,
                    metrics,
                    *plans.route_handlers,
                    *ollama_api.route_handlers,
                    *openai_api.route_handlers,
                ]
            ),
            console_router,
        ],
        state=State({"container": container}),
        lifespan=[lifespan],
        middleware=[RequestMetrics(container.telemetry())],
        exception_handlers=exception_handlers,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="ollama-gate",
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        logging_config=None,
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
    )
    complete_document(app)
    # Access lines only when they are wanted: each costs a record per request.
    access = (
        AccessLog(lambda scope: decided_client_ip(scope, settings))
        if settings.log_level in ("info", "debug")
        else None
    )
    # Around Litestar's own handler (its router and exception handlers), not as route middleware: answers
    # no route produced (404, 405) get a request id and an access line too. Each app (so each worker
    # process) makes ids with a prefix of its own.
    app.asgi_handler = RequestEdge(
        DirectRoutes(app, app.asgi_handler, exception_handlers), RequestIds(), access
    )
    return app


def app_from_environment() -> Litestar:
    """Factory for `uvicorn --factory` and worker processes: settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(build_container(settings))
