"""How the gateway's logs are written: one line per record on stderr."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Every process (the CLI, each worker) calls this once with the configured level."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
