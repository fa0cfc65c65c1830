"""Logging for ``keygate serve``: structured lines on stderr, access lines in batches.

The access log writes one line per request. Through a plain StreamHandler each
line costs a write and a flush (a system call) plus a timestamp formatted from
scratch: together more than the key check itself. Here access lines are
formatted with a per-second cached timestamp and written in batches (every
``ACCESS_BATCH`` lines, every ``ACCESS_FLUSH_INTERVAL`` seconds, on a warning,
and at stop); everything else is written at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

ACCESS_LOGGER = "keygate.access"
ACCESS_BATCH = 256  # lines
ACCESS_FLUSH_INTERVAL = 0.5  # seconds
FORMAT = "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"


class CachedTimeFormatter(logging.Formatter):
    """``logging.Formatter`` whose asctime is computed once per second."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """``created`` as asctime renders it (msecs as LogRecord computes them)."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        msecs = int((created - second) * 1000) + 0.0  # LogRecord's rounding
        return f"{self._stamp},{int(msecs):03d}"


class BatchedStreamHandler(logging.Handler):
    """Formats each record at once, writes them in batches: one write per flush."""

    def __init__(self, stream: TextIO, capacity: int = ACCESS_BATCH) -> None:
        super().__init__()
        self.stream = stream
        self.capacity = capacity
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._lines) >= self.capacity or record.levelno >= logging.WARNING:
            self.flush()

    def write_line(self, line: str) -> None:
        """A line formatted already (see :func:`info_line_writer`)."""
        self._lines.append(line)
        if len(self._lines) >= self.capacity:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: drop, never crash
            pass


def configure_logging() -> None:
    """Idempotent: the level comes from ``KEYGATE_LOG_LEVEL`` (default INFO)."""
    # What the records would carry and we never print: the caller's source
    # location (a stack walk per record), thread and multiprocessing names.
    # The switches the logging docs' "Optimization" section names; together
    # they halve the cost of an access line.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.setLevel(os.environ.get("KEYGATE_LOG_LEVEL", "INFO").upper())
    # aiosqlite logs every statement with its parameters at DEBUG, and
    # parameters hold webhook secrets and digests: never below INFO, whatever
    # KEYGATE_LOG_LEVEL says (docs/reference.md#logging).
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    formatter = CachedTimeFormatter(FORMAT)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(h, BatchedStreamHandler) for h in access.handlers):
        batched = BatchedStreamHandler(sys.stderr)
        batched.setFormatter(formatter)
        access.addHandler(batched)
        access.propagate = False


def flush_access_log() -> None:
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()


async def flush_access_log_periodically() -> None:
    while True:
        await asyncio.sleep(ACCESS_FLUSH_INTERVAL)
        flush_access_log()


def info_line_writer(logger: logging.Logger) -> Callable[[str], None] | None:
    """For a logger that :func:`configure_logging` set up: a function that writes
    an info message exactly as its handler would format it, without building a
    ``LogRecord`` (a few microseconds a line, the most of an access line's cost).

    None when the logger is set up any other way (tests, embedding): then log
    through the logger, so every handler and filter sees the record.
    """
    handlers = logger.handlers
    if len(handlers) != 1 or logger.propagate or logger.filters:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if (
        type(handler) is not BatchedStreamHandler
        or handler.filters
        or type(formatter) is not CachedTimeFormatter
        or formatter._fmt != FORMAT
    ):
        return None
    lead = f" INFO {logger.name} pid={os.getpid()} "
    stamp = formatter.stamp
    write = handler.write_line
    clock = time.time

    def write_info(message: str) -> None:
        if logger.isEnabledFor(logging.INFO):
            write(stamp(clock()) + lead + message)

    return write_info
