"""structlog set-up: JSON lines for journald, readable lines on a terminal.

Standard-library loggers (asyncpg, aiohttp) go through the same processors, so every
line in the journal has one shape whoever wrote it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def setup(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog and the standard library's root logger; safe to call twice."""
    stream = stream or sys.stdout
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line a request: the phone menu's surge would drown the journal.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    pool = logging.getLogger("asyncpg.pool")
    pool.filters[:] = [f for f in pool.filters if not isinstance(f, _OncePerOutage)]
    pool.addFilter(POOL_FLOOR)


class _OncePerOutage(logging.Filter):
    """asyncpg's pool logs "Failed to restore the pool connection floor; retrying" with a
    full traceback about every second while the database is away: let the first through
    as one line (the error, no traceback) and drop the rest until `reset()` (the database
    answers again); the daemon's own db.unavailable / db.available_again say the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "pool connection floor" not in record.getMessage():
            return True
        if self.said:
            return False
        self.said = True
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({str(error) or type(error).__name__})"
            record.args = None
        record.exc_info = None
        record.exc_text = None
        return True

    def reset(self) -> None:
        self.said = False


POOL_FLOOR = _OncePerOutage()


def get(name: str = "outagemon") -> Any:
    """A bound structlog logger."""
    return structlog.get_logger(name)
