"""Access-log batching and the cached-time formatter of ``keygate serve``."""

from __future__ import annotations

import io
import logging

import pytest

from keygate.gateway.http.logsetup import (
    FORMAT,
    BatchedStreamHandler,
    CachedTimeFormatter,
    configure_logging,
)


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def record(
    msg: str, level: int = logging.INFO, created: float = 1_800_000_000.25
) -> logging.LogRecord:
    rec = logging.LogRecord("keygate.access", level, __file__, 1, msg, None, None)
    rec.created = created
    rec.msecs = (created - int(created)) * 1000
    return rec


def test_logsetup_cached_formatter_matches_logging_formatter() -> None:
    ours, reference = CachedTimeFormatter(FORMAT), logging.Formatter(FORMAT)
    for created in (1_800_000_000.25, 1_800_000_000.999, 1_800_000_001.0, 1_800_000_000.5):
        rec = record("method=GET", created=created)
        assert ours.format(rec) == reference.format(rec)


def test_logsetup_batched_handler_writes_once_per_batch() -> None:
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, capacity=10)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(25):
        handler.handle(record(f"line {i}"))
    assert stream.writes == 2  # two full batches; five lines wait
    handler.flush()
    assert stream.writes == 3
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(25)]


def test_logsetup_batched_handler_flushes_at_once_on_warning() -> None:
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, capacity=100)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(record("quiet"))
    assert stream.writes == 0
    handler.handle(record("loud", level=logging.WARNING))
    assert stream.getvalue().splitlines() == ["quiet", "loud"]


def test_logsetup_aiosqlite_never_logs_statements_at_debug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiosqlite's DEBUG lines carry SQL parameters: digests, webhook secrets.
    root = logging.getLogger()
    saved = root.level, logging.getLogger("aiosqlite").level
    monkeypatch.setenv("KEYGATE_LOG_LEVEL", "debug")
    try:
        configure_logging()
        assert root.level == logging.DEBUG
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        logging.getLogger("aiosqlite").setLevel(saved[1])
