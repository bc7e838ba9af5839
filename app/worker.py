"""A worker process of ``playerpulse serve`` (started by the supervisor, never by hand)."""

from __future__ import annotations

import os
import sys

import structlog

from app.log import configure_logging
from app.server import WORKER_INDEX, run_worker
from app.settings import Settings


def main() -> int:
    """Serve on the supervisor's socket until SIGTERM; return the exit code."""
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(worker=int(os.environ.get(WORKER_INDEX, "0")))
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
