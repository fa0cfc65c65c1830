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
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


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
