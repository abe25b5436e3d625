"""`ollama-gate serve | keys create|list|revoke`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import msgspec
from ollama_gate.domain.errors import GatewayError
from ollama_gate.entrypoints.config import ConfigError, Settings, load_settings
from ollama_gate.entrypoints.container import build_container
from ollama_gate.entrypoints.controllers.keys import key_view
from ollama_gate.services.keys import KeyService

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-gate", description="A self-hosted gateway for Ollama.")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to bind (default: OLLAMA_GATE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: OLLAMA_GATE_PORT or 8000)")

    keys = commands.add_parser("keys", help="manage API keys in the configured database")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--user-id", required=True)
    create.add_argument("--name")
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--user-id")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=int)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _serve(settings: Settings) -> int:
    import uvicorn
    from ollama_gate.entrypoints.app import create_app

    configure_logging(settings.log_level)
    print(f"ollama-gate listening on http://{settings.host}:{settings.port}", flush=True)
    for name, value in settings.public_view().items():
        print(f"  {name}={value}", flush=True)
    app = create_app(build_container(settings))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level in ("info", "debug"),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0


def _with_keys(settings: Settings, action: Callable[[KeyService], Awaitable[T]]) -> T:
    async def run() -> T:
        container = build_container(settings)
        database = container.database()
        try:
            await database.ensure_schema()
            return await action(container.keys())
        finally:
            await database.close()

    return asyncio.run(run())


def _print_json(value: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        issued = _with_keys(settings, lambda keys: keys.create(args.user_id, args.name))
        _print_json({**key_view(issued.key), "key": issued.secret})
        print("Store the key now: it is shown only once.", file=sys.stderr)
    elif args.keys_command == "list":
        listed = _with_keys(settings, lambda keys: keys.list(args.user_id))
        _print_json({"keys": [key_view(key) for key in listed]})
    else:
        revoked = _with_keys(settings, lambda keys: keys.revoke(args.key_id, None))
        _print_json({"id": revoked.id, "revoked": True})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "keys":
            return _keys(settings, args)
        if args.host:
            settings = replace(settings, host=args.host)
        if args.port:
            settings = replace(settings, port=args.port)
        return _serve(settings)
    except ConfigError as error:
        print(f"ollama-gate: {error}", file=sys.stderr)
        return 2
    except GatewayError as error:
        print(f"ollama-gate: {error.detail}", file=sys.stderr)
        return 1
