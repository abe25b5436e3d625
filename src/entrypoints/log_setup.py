"""How the gateway's logs are written: one record per line on stderr, as text or as JSON.

JSON lines are objects with `timestamp` (UTC, ISO 8601), `level`, `logger` and `message`, an `exception`
when the record has one, and the access fields (access_log.ACCESS_FIELDS) as keys of their own on access
lines. msgspec escapes every control character, so no value (a path, a model name) can break a line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from ollama_gate.entrypoints.access_log import ACCESS_FIELDS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_BASE_KEYS = ("timestamp", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6]
            + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, ACCESS_FIELDS, None)
        if isinstance(fields, dict):
            document.update((k, v) for k, v in fields.items() if k not in _BASE_KEYS)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return self._encoder.encode(document).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Every process (the CLI, each worker) calls this once with the configured level and format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
