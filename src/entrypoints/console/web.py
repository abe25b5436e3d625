"""The console's plumbing: who is signed in, the form checks, rendering, and errors as pages.

Every page resolves the session cookie into a `Principal` and calls the same services the API calls, so
the same access rules apply. Every POST passes `checked_form`: the request must come from the console's
own origin and carry the session's form token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template

from ollama_gate.domain.access import Principal
from ollama_gate.domain.client_address import parse_ip
from ollama_gate.domain.console_session import COOKIE_NAME, CSRF_FIELD, ConsoleSession, same_origin_request
from ollama_gate.domain.errors import Forbidden, GatewayError
from ollama_gate.domain.immutable import immutable
from ollama_gate.entrypoints.request_context import container_of, is_relayed, peer_of
from ollama_gate.services.console import ConsoleSessions

log = logging.getLogger(__name__)

PREFIX = "/console"
LOGIN_PATH = f"{PREFIX}/login"
HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
CROSS_SITE = "cross-site request refused: submit the form from the console's own pages"
ADMINS_ONLY = "this page is for admins only: members see their own keys and usage"

# Pages and their answers: nothing from a page is cached or framed; scripts and styles are the
# gateway's own files only (the charts' data rides in a JSON block, which is not executed).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SignInRequired(Exception):
    """No valid session: the visitor goes to the sign-in page."""


@immutable
class Visitor:
    """A signed-in visitor: the session, what it may do, and the token its forms carry."""

    session: ConsoleSession
    principal: Principal
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def name(self) -> str:
        return "admin" if self.principal.is_admin else (self.principal.user_id or "")


def sessions_of(request: Request[Any, Any, Any]) -> ConsoleSessions:
    return container_of(request).console_sessions()


async def visitor_of(request: Request[Any, Any, Any], *, admin: bool = False) -> Visitor:
    """The signed-in visitor (SignInRequired without one); Forbidden for a member on an admin page."""
    sessions = sessions_of(request)
    resumed = await sessions.resume(request.cookies.get(COOKIE_NAME), peer_of(request), is_relayed(request))
    if resumed is None:
        raise SignInRequired()
    session, principal = resumed
    if admin and not principal.is_admin:
        raise Forbidden(ADMINS_ONLY)
    visitor = Visitor(session, principal, sessions.form_token(session))
    request.scope["state"]["console_visitor"] = visitor
    return visitor


def from_own_pages(request: Request[Any, Any, Any]) -> bool:
    headers = request.headers
    return same_origin_request(
        headers.get("origin"), headers.get("sec-fetch-site"), headers.get("referer"), headers.get("host")
    )


async def posted(request: Request[Any, Any, Any], *, admin: bool = False) -> tuple[Visitor, dict[str, str]]:
    """The visitor and form of a state-changing request, after its checks, in this order: the request
    comes from the console's own origin (403 otherwise, before anything else, signed in or not), a
    signed-in visitor (admin when `admin`), and the session's form token (403)."""
    if not from_own_pages(request):
        raise Forbidden(CROSS_SITE)
    visitor = await visitor_of(request, admin=admin)
    form = await form_of(request)
    if not sessions_of(request).form_token_matches(visitor.session, form.get(CSRF_FIELD)):
        raise Forbidden(CROSS_SITE)
    return visitor, form


async def form_of(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A urlencoded (or multipart) form as single text values (the first of a repeated name)."""
    data = await request.form()
    values: dict[str, str] = {}
    for name, value in data.multi_items():
        if isinstance(value, str) and name not in values:
            values[name] = value
    return values


def is_https(request: Request[Any, Any, Any]) -> bool:
    """Whether the visitor's page is https: the connection's own scheme, or what a trusted proxy that
    ends TLS says in `X-Forwarded-Proto` (the proxies of OLLAMA_GATE_TRUSTED_PROXIES only)."""
    if request.url.scheme == "https":
        return True
    trusted = container_of(request).settings().trusted_proxies
    peer = parse_ip(peer_of(request))
    if peer is None or not any(peer in network for network in trusted):
        return False
    return request.headers.get("x-forwarded-proto", "").strip().lower() == "https"


def session_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=COOKIE_NAME,
        value=value,
        path=PREFIX,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def page(
    request: Request[Any, Any, Any],
    name: str,
    visitor: Visitor | None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """A page: the template `name` with the visitor (for the navigation and the form token)."""
    return Template(
        template_name=name,
        context={"visitor": visitor, "csrf_field": CSRF_FIELD, "path": request.url.path, **context},
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )


def see_other(path: str, **query: str) -> Redirect:
    """After a POST: back to a page with GET (the browser's reload does not repeat the action)."""
    return Redirect(path, query_params=query or None, status_code=303, headers=SECURITY_HEADERS)


# -- errors as pages ---------------------------------------------------------------------------------


def _visitor_in(request: Request[Any, Any, Any]) -> Visitor | None:
    visitor: Visitor | None = request.scope.get("state", {}).get("console_visitor")
    return visitor


def sign_in_required(request: Request[Any, Any, Any], _error: SignInRequired) -> Response[Any]:
    return Redirect(LOGIN_PATH, status_code=303, headers=SECURITY_HEADERS)


def error_page(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """A page that says what went wrong, with the status it means; nothing internal."""
    if isinstance(error, GatewayError):
        status, message = error.status, str(error) or "the request could not be served"
    elif isinstance(error, HTTPException):
        status, message = error.status_code, error.detail
    elif isinstance(error, UnicodeDecodeError | RecursionError):
        status, message = 400, "the form could not be read"
    else:
        log.exception("console error on %s", request.url.path, exc_info=error)
        status, message = 500, "something went wrong on the gateway: the error is in its log"
    titles = {
        400: "Not valid",
        401: "Not signed in",
        403: "Not allowed",
        404: "Not found",
        503: "Unavailable",
    }
    return page(
        request,
        "error.html",
        _visitor_in(request),
        status_code=status,
        title=titles.get(status, "Error"),
        message=message,
    )


# Every kind the app maps, mapped again here: Litestar takes the most specific handler of either level,
# so the app's GatewayError handler would otherwise answer the console's pages in JSON.
exception_handlers: Any = {
    SignInRequired: sign_in_required,
    GatewayError: error_page,
    HTTPException: error_page,
    UnicodeDecodeError: error_page,
    RecursionError: error_page,
    Exception: error_page,
}
