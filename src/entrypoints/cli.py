"""`ollama-gate serve | keys create|list|revoke`."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import msgspec

from ollama_gate.domain.errors import GatewayError, InvalidRequest
from ollama_gate.domain.keys import IssuedKey
from ollama_gate.domain.plans import FIELD_NAMES
from ollama_gate.entrypoints.config import ConfigError, Settings, load_settings
from ollama_gate.entrypoints.container import Container, build_container, prepare_worker_metrics
from ollama_gate.entrypoints.controllers.keys import key_view
from ollama_gate.entrypoints.log_setup import configure_logging
from ollama_gate.services.keys import KeyService

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-gate", description="A self-hosted gateway for Ollama.")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to bind (default: OLLAMA_GATE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: OLLAMA_GATE_PORT or 8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (more than 1 needs OLLAMA_GATE_REDIS_URL)"
    )

    db = commands.add_parser("db", help="database schema migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply pending migrations")
    db_commands.add_parser("current", help="print the schema revision of the database")

    keys = commands.add_parser("keys", help="manage API keys in the configured database")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--user-id", required=True)
    create.add_argument("--name")
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--user-id")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=int)
    create.add_argument("--plan", help="a plan of the key's own (its requests then count per key)")

    plans = commands.add_parser("plans", help="manage plans in the configured database")
    plan_commands = plans.add_subparsers(dest="plans_command", required=True)
    plan_commands.add_parser("list", help="every plan, the built-ins included")
    setting = plan_commands.add_parser(
        "set", help="create a plan, or change the fields given (a value of 'none' removes a limit)"
    )
    setting.add_argument("name")
    for field in FIELD_NAMES:
        setting.add_argument("--" + field.replace("_", "-"), dest=field, metavar="VALUE")
    removing = plan_commands.add_parser("delete", help="delete a plan nobody uses")
    removing.add_argument("name")

    users = commands.add_parser("users", help="users and their plans")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    user_commands.add_parser("list", help="every user with a key or a plan")
    set_plan = user_commands.add_parser("set-plan", help="put a user on a plan")
    set_plan.add_argument("user_id")
    set_plan.add_argument("plan")
    return parser


SINGLE_PROCESS_LIMITS = (
    "--workers {n} needs OLLAMA_GATE_REDIS_URL: without a shared Redis every worker keeps its own rate "
    "limits, so a limit of N per minute would become {n}xN per minute"
)


def _serve(settings: Settings, workers: int) -> int:
    from ollama_gate.entrypoints.app import create_app
    from ollama_gate.entrypoints.http_server import HttpLimits, serve

    if workers < 1:
        print("ollama-gate: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and settings.redis_url is None:
        print(f"ollama-gate: {SINGLE_PROCESS_LIMITS.format(n=workers)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    print(f"ollama-gate listening on http://{settings.host}:{settings.port}", flush=True)
    for name, value in settings.public_view().items():
        print(f"  {name}={value}", flush=True)
    if workers > 1:
        print(f"  workers={workers}", flush=True)
    limits = HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        max_connections=settings.max_connections,
        shutdown_timeout=settings.shutdown_timeout,
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # The gateway writes its own access lines (entrypoints/access_log.py), with the client address its
        # trusted-proxy rule decided on.
        "access_log": False,
        "loop": "uvloop",
        "lifespan": "on",
        "log_config": None,
        "server_header": False,
    }
    if workers > 1:
        # Each worker builds its own app from the same environment (uvicorn imports the factory); their
        # metrics meet in one directory, so /metrics from any of them covers all. The console's sessions
        # must be valid on every worker: without a configured secret, they share one made here.
        if settings.console_secret is None:
            os.environ["OLLAMA_GATE_CONSOLE_SECRET"] = secrets.token_hex(32)
        serve(
            "ollama_gate.entrypoints.app:app_from_environment",
            limits,
            workers,
            on_worker_exit=prepare_worker_metrics(),
            factory=True,
            **options,
        )
    else:
        serve(create_app(build_container(settings)), limits, workers, **options)
    return 0


def _db(settings: Settings, command: str) -> int:
    async def run() -> str | None:
        database = build_container(settings).database()
        try:
            return await (database.upgrade() if command == "upgrade" else database.current_revision())
        finally:
            await database.close()

    revision = asyncio.run(run())
    print(f"database at revision {revision or '(none)'}")
    return 0


def _with_container(settings: Settings, action: Callable[[Container], Awaitable[T]]) -> T:
    """`action` on a container over the configured database (migrated first), closed afterwards."""

    async def run() -> T:
        container = build_container(settings)
        database = container.database()
        try:
            await database.ensure_schema()
            await container.plans().refresh()
            return await action(container)
        finally:
            await database.close()

    return asyncio.run(run())


def _with_keys(settings: Settings, action: Callable[[KeyService], Awaitable[T]]) -> T:
    return _with_container(settings, lambda container: action(container.keys()))


def _print_json(value: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    if args.keys_command == "create":

        async def create(container: Container) -> IssuedKey:
            plan = container.plans().require_plan(args.plan)
            return await container.keys().create(args.user_id, args.name, plan)

        issued = _with_container(settings, create)
        _print_json({**key_view(issued.key), "key": issued.secret})
        print("Store the key now: it is shown only once.", file=sys.stderr)
    elif args.keys_command == "list":
        listed = _with_keys(settings, lambda keys: keys.list(args.user_id))
        _print_json({"keys": [key_view(key) for key in listed]})
    else:
        revoked = _with_keys(settings, lambda keys: keys.revoke(args.key_id, None))
        _print_json({"id": revoked.id, "revoked": True})
    return 0


def _cli_value(field: str, text: str) -> Any:
    """A plan field as typed on the command line, in the form the API takes it."""
    if text.strip().lower() == "none":
        return None
    if field == "models":
        return [name.strip() for name in text.split(",") if name.strip()]
    if field in ("requests", "tokens") or (field == "max_keep_alive" and not _is_number(text)):
        return text
    number = float(text)
    return int(number) if number.is_integer() and field not in ("weight", "queue_timeout") else number


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _plans(settings: Settings, args: argparse.Namespace) -> int:
    async def run(container: Container) -> Any:
        book = container.plans()
        if args.plans_command == "list":
            return {"plans": [plan.fields() for plan in book.all()]}
        if args.plans_command == "delete":
            await book.delete(args.name)
            return {"name": args.name, "deleted": True}
        try:
            fields = {
                field: _cli_value(field, getattr(args, field))
                for field in FIELD_NAMES
                if getattr(args, field) is not None
            }
        except ValueError as error:
            raise InvalidRequest(f"invalid value: {error}") from None
        plan = await (
            book.patch(args.name, fields) if book.exists(args.name) else book.put(args.name, fields)
        )
        return plan.fields()

    _print_json(_with_container(settings, run))
    return 0


def _users(settings: Settings, args: argparse.Namespace) -> int:
    async def run(container: Container) -> Any:
        book = container.plans()
        if args.users_command == "list":
            return {
                "users": [{"user_id": u.user_id, "plan": u.plan, "keys": u.keys} for u in await book.users()]
            }
        user = await book.assign(args.user_id, args.plan)
        return {"user_id": user.user_id, "plan": user.plan}

    _print_json(_with_container(settings, run))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "keys":
            return _keys(settings, args)
        if args.command == "db":
            return _db(settings, args.db_command)
        if args.command == "plans":
            return _plans(settings, args)
        if args.command == "users":
            return _users(settings, args)
        if args.host:
            settings = replace(settings, host=args.host)
        if args.port:
            settings = replace(settings, port=args.port)
        return _serve(settings, getattr(args, "workers", 1))
    except ConfigError as error:
        print(f"ollama-gate: {error}", file=sys.stderr)
        return 2
    except GatewayError as error:
        print(f"ollama-gate: {error.detail}", file=sys.stderr)
        return 1
