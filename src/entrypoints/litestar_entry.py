"""The app as the server calls it: Litestar's own entry point, without its coroutine frame.

`Litestar.__call__` is a coroutine that marks the scope (`app`, `litestar_app`, `state`) and awaits the
app's handler: for as long as a request runs, its frame stays alive under the handler's. A request waiting
for a GPU slot holds every frame of its chain, so with thousands waiting each frame counts (264 bytes here,
and 80 more the call keeps). `LitestarEntry` marks the scope the same way and hands back the handler's own
coroutine, keeping no frame of its own. Lifespan events, and apps with `before_send` hooks (whose send
wrapper is Litestar's to build), go through `Litestar.__call__` as before.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

from litestar import Litestar
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send


class LitestarEntry:
    __slots__ = ("app",)

    def __init__(self, app: Litestar) -> None:
        self.app = app

    def __call__(
        self, scope: Scope | LifeSpanScope, receive: Receive | LifeSpanReceive, send: Send | LifeSpanSend
    ) -> Awaitable[None]:
        app = self.app
        if scope["type"] == "lifespan":
            return app(scope, receive, send)
        # What Litestar.__call__ does before it awaits the handler (litestar 2.x, app.py).
        scope["app"] = scope["litestar_app"] = app
        scope.setdefault("state", {})
        return app.asgi_handler(scope, cast(Receive, receive), cast(Send, send))


def entry_of(app: Any) -> Any:
    """What the server should call for `app`: a `LitestarEntry` for a plain Litestar app, else `app`."""
    if isinstance(app, Litestar) and not app.before_send:
        return LitestarEntry(app)
    return app
