"""The metered routes called directly: the same handlers, without Litestar's per-request machinery.

Litestar spends a measurable share of a /chat request before and after the handler runs: its router's
lookup, two exception-handling layers, the route's `handle` (a signature model, the kwargs, the response
conversion). Measured with the bench's fake upstream, calling the handler directly took /chat from 418 to
351 us of CPU. The metered routes need none of it: their handlers take only the request, run one
`before_request` hook, and return a bare ASGI answer (entrypoints/asgi_answers.py).

`DirectRoutes` finds the handlers marked `opt=direct()` when the app is built, checks that they have that
shape, and serves their method and path itself: the route's middleware (the app's metrics, the client's
presence) around the hook, the handler and its answer, and the app's exception handlers for whatever they
raise, exactly as Litestar would; middleware that is all `InlineMiddleware` runs in the route's own
coroutine. Every other request goes to Litestar as before, and the routes stay Litestar's for everything
else (the OpenAPI document, OPTIONS, 405 for other methods).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, cast, get_type_hints

from litestar import Litestar, Request
from litestar.enums import ASGIExtension, ScopeType
from litestar.exceptions import ImproperlyConfiguredException
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Empty, HTTPScope, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

from ollama_gate.entrypoints.asgi_answers import Answer
from ollama_gate.entrypoints.inline_middleware import InlineMiddleware, enter_all

OPT_KEY = "direct"
# The direct routes have no path parameters, and uvicorn offers no extensions: one read-only empty mapping
# for both, not a dict per request (a request waiting for the GPU holds it for as long as it waits).
_NOTHING = cast(dict[str, Any], MappingProxyType({}))
ErrorHandlers = Mapping[type[BaseException], Callable[[Request[Any, Any, Any], Any], Any]]


def direct() -> dict[str, Any]:
    """`opt=` of a handler that `DirectRoutes` may call itself (merge it with other `opt` entries)."""
    return {OPT_KEY: True}


class DirectRequest(Request[Any, Any, Any]):
    """Litestar's `Request` as the direct routes make it: the same object, except that its per-request
    state (Litestar's `ScopeState` and the three containers it makes at once, about 450 bytes with the
    scope's entry for it) is made when something first reads it. The metered routes read only the scope,
    `receive` and the route handler, so a request that waits for the GPU never makes it; an error answer or
    a header lookup does, and gets what `Request` would have given it."""

    __slots__ = ("_lazy_state",)

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Request.__init__ without the state: the attributes it sets, in its order, with their values.
        self.scope = cast(HTTPScope, scope)
        self.receive = receive
        self.send = send
        self._lazy_state: ScopeState | None = None
        self._base_url = self._url = self._parsed_query = self._cookies = Empty
        self._server_extensions = scope.get("extensions") or _NOTHING
        self.is_connected = True
        self._body = self._form = self._json = self._msgpack = Empty
        self._content_type = self._accept = self._content_length = Empty
        self.supports_push_promise = ASGIExtension.SERVER_PUSH in self._server_extensions

    @property
    def _connection_state(self) -> ScopeState:
        state = self._lazy_state
        if state is None:
            state = self._lazy_state = ScopeState.from_scope(self.scope)
        return state

    @_connection_state.setter
    def _connection_state(self, state: ScopeState) -> None:
        self._lazy_state = state


class DirectRoutes:
    """An ASGI app in front of Litestar's own handler (`app.asgi_handler`)."""

    def __init__(self, app: Litestar, inner: ASGIApp, error_handlers: ErrorHandlers) -> None:
        self._inner = inner
        self._error_handlers = error_handlers
        self._routes: dict[tuple[str, str], tuple[HTTPRouteHandler, str, ASGIApp]] = {}
        for route in app.routes:
            if not isinstance(route, HTTPRoute):
                continue
            for handler in route.route_handlers:
                if handler.opt.get(OPT_KEY):
                    _check_shape(route, handler)
                    served = (handler, route.path, self._serve(handler))
                    for method in handler.http_methods:
                        self._routes[(method, route.path)] = served

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: it hands back the route's, so it keeps no frame alive while the request
        # runs (a request waiting for the GPU holds every frame of its chain).
        if scope["type"] == ScopeType.HTTP:
            served = self._routes.get((scope["method"], scope["path"]))
            if served is not None:
                handler, path, stacked = served
                # What Litestar's router leaves on the scope, for the middleware and the handler to read.
                scope["route_handler"] = handler
                scope["path_template"] = path
                scope["path_params"] = _NOTHING
                return stacked(scope, receive, send)
        return self._inner(scope, receive, send)

    def _serve(self, handler: HTTPRouteHandler) -> ASGIApp:
        call: Callable[[Request[Any, Any, Any]], Awaitable[Answer]] = handler.fn
        hook = handler.resolve_before_request()
        error_answer = self._error_answer
        # Litestar's order: the app's middleware outside the route's own (the list is innermost first).
        middleware: list[Any] = handler.resolve_middleware()
        if all(isinstance(each, InlineMiddleware) for each in middleware):
            # All of it runs in the one coroutine below: a waiting request keeps no frame per middleware.
            inline = tuple(cast(InlineMiddleware, each) for each in reversed(middleware))
        else:
            inline = ()

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            receive, send, entered = enter_all(inline, scope, receive, send)
            with entered:
                request = DirectRequest(scope, receive, send)
                try:
                    if hook is not None:
                        await hook(request)
                    answer: Any = await call(request)
                except Exception as error:  # as Litestar's exception middleware: the app's handlers answer
                    answer = error_answer(request, error)
                await answer(scope, receive, send)

        stacked: ASGIApp = serve
        if not inline:
            for each in middleware:
                stacked = each(app=stacked)
        return stacked

    def _error_answer(self, request: Request[Any, Any, Any], error: Exception) -> ASGIApp:
        for kind in type(error).__mro__:
            handler = self._error_handlers.get(kind)
            if handler is not None:
                response = handler(request, error)
                return response.to_asgi_response(app=None, request=request)  # type: ignore[no-any-return]
        raise error  # the handlers include Exception: not reached


def _check_shape(route: HTTPRoute, handler: HTTPRouteHandler) -> None:
    """Only a handler that takes the request alone and returns a bare answer can be called directly (it
    needs no kwargs, dependencies, guards or response conversion of Litestar's)."""
    fn = handler.fn
    parameters = list(inspect.signature(fn).parameters)
    returns = get_type_hints(fn).get("return")
    plain = (
        parameters == ["request"]
        and not route.path_parameters
        and not handler.resolve_guards()
        and not handler.resolve_dependencies()
        and handler.resolve_request_class() is Request
        and isinstance(returns, type)
        and issubclass(returns, Answer)
    )
    if not plain:
        raise ImproperlyConfiguredException(
            f"{handler.handler_name} on {route.path} cannot be called directly: it must take only the "
            "request (Litestar's own class), have no path parameters, guards or dependencies, and return "
            "an Answer"
        )
