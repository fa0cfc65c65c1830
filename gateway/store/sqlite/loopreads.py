"""Key lookups read on the event loop: a read-only stdlib ``sqlite3`` connection.

A cache miss read through aiosqlite's thread costs two thread hand-offs (and
the GIL each way): about 60-90 µs on the development machine, and under load
the reply waits for the loop's next pass. The same primary-key lookup in
process costs 7-12 µs when the file's pages are in memory (the OS page cache
or SQLite's mmap), so it is cheaper to read it right on the loop. In WAL mode
a reader never waits for the writer (it reads the last committed snapshot),
so the read does not block on the store's other connections either.

The price is a read of a page that is not in memory: the loop waits for the
disk (about 0.15 ms a lookup measured with a dropped page cache here, more on
a slow disk). ``store.sqlite_loop_reads = false`` sends the lookups to the
reader thread again; docs/architecture.md#cache-misses has the numbers.

Anything unusual (the connection cannot be opened, ``SQLITE_BUSY`` during a
WAL recovery, an I/O error) sends that batch to the thread, whose answer, or
failure, the store reports as for any other read.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keygate.gateway.store.sqlite.connection import bind

log = logging.getLogger("keygate.store")

# Pages the connection maps instead of copying (SQLite reads through mmap up
# to this many bytes of the file; the OS shares those pages between workers).
MMAP_BYTES = 256 * 1024 * 1024
# A reader in WAL mode waits only while another connection recovers the WAL
# index, a rare moment; the loop must not: give up at once and use the thread.
BUSY_TIMEOUT_MS = 0


class LoopReader:
    """One read-only connection, used only on the event loop's thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self.fallbacks = 0  # batches sent to the thread instead

    def open(self) -> None:
        # Opened read-write but made read-only by query_only: a mode=ro
        # connection may map the WAL index without write access, a mode
        # SQLite documents for read-only media, not for a live WAL.
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.debug("no read-only connection for lookups on the loop: %s", exc)
            return
        try:
            db.execute("PRAGMA query_only = 1")
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        except sqlite3.Error as exc:
            log.debug("no read-only connection for lookups on the loop: %s", exc)
            db.close()
            return
        self._db = db

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version`` on this connection: it moves whenever
        another connection (any process's writer) commits. None: not available."""
        db = self._db
        if db is None:
            return None
        try:
            # fetchall: a statement left unfinished would hold its read
            # transaction open, and the connection would never see a new commit.
            return int(db.execute("PRAGMA data_version").fetchall()[0][0])
        except sqlite3.Error as exc:
            log.debug("data_version on the loop failed (%s)", exc)
            return None

    def fetch(self, sql: str, *args: Any) -> Sequence[Any] | None:
        """The rows of ``sql`` (``$n`` parameters), or None: ask the thread."""
        db = self._db
        if db is None:
            return None
        try:
            return db.execute(*bind(sql, args)).fetchall()
        except sqlite3.Error as exc:
            self.fallbacks += 1
            log.debug("lookup on the loop failed (%s); the reader thread takes it", exc)
            return None
