"""Middleware as an entry and an exit, so that a direct route can run it without a coroutine of its own.

A request waiting for a GPU slot holds every coroutine of its chain for as long as it waits, a few hundred
bytes each: with thousands waiting, a middleware's `async def` wrapper is memory. An `InlineMiddleware`
says what it does before the app (`enter`: the receive and send the app gets, and a token) and after it
(`exit`: with the app's exception, if any, which it may handle). Litestar stacks it like any middleware
(`__call__` builds the usual wrapper); `DirectRoutes` runs every entry and exit in the route's own
coroutine (`enter_all`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send


class InlineMiddleware(ABC):
    """A middleware that can run in its caller's coroutine: `enter` before the app, `exit` after it."""

    @abstractmethod
    def enter(self, scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send, Any]:
        """Before the app: the `receive` and `send` it is to get, and the token `exit` gets. Must not raise."""

    @abstractmethod
    def exit(self, scope: Scope, token: Any, error: BaseException | None) -> bool:
        """After the app, whatever its end (`error`: what it raised, else None): True when `error` is
        handled here and the request ends quietly."""

    def __call__(self, app: ASGIApp) -> ASGIApp:
        chain = (self,)

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            receive, send, entered = enter_all(chain, scope, receive, send)
            with entered:
                await app(scope, receive, send)

        return wrapped


class Entered:
    """The entries made for one request; leaving it (`with`) runs their exits, the innermost first. An
    error one exit handles is no error to the exits outside it, nor to the caller."""

    __slots__ = ("_chain", "_scope", "_tokens")

    def __init__(self, chain: Sequence[InlineMiddleware], scope: Scope, tokens: list[Any]) -> None:
        self._chain = chain
        self._scope = scope
        self._tokens = tokens

    def __enter__(self) -> Entered:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> bool:
        chain, tokens = self._chain, self._tokens
        for index in range(len(chain) - 1, -1, -1):
            if chain[index].exit(self._scope, tokens[index], error):
                error = None
        return error is None


def enter_all(
    outer_first: Sequence[InlineMiddleware], scope: Scope, receive: Receive, send: Send
) -> tuple[Receive, Send, Entered]:
    """Every entry, the outermost first: the `receive` and `send` of the app inside them all, and what
    runs the exits."""
    tokens: list[Any] = [None] * len(outer_first)
    for index, middleware in enumerate(outer_first):
        receive, send, tokens[index] = middleware.enter(scope, receive, send)
    return receive, send, Entered(outer_first, scope, tokens)
