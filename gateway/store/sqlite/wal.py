"""When to fold the WAL back into the database: once a burst of writes is over.

SQLite's own checkpoints (``wal_autocheckpoint``) run inside the commit that
crosses the threshold and leave the WAL file at its largest size (up to
``journal_size_limit``). On a small volume that space is better given back:
once the store has been quiet for ``after`` seconds following a write, the
store runs ``PRAGMA wal_checkpoint(TRUNCATE)`` (when the WAL has grown past
``CHECKPOINT_MIN_WAL``). One checkpoint per burst, never one per write: a
checkpoint waits for the write lock and fsyncs.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

from keygate.gateway import background

log = logging.getLogger("keygate.store")
# How long the writer waits for other processes' readers to leave old
# snapshots before it postpones the truncation to the next burst: every write
# of this process queues behind it.
CHECKPOINT_BUSY_MS = 200


async def truncate_wal(db: aiosqlite.Connection, busy_timeout_ms: int, path: Path) -> bool:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` on the writer ``db``; whether it
    completed (False: busy readers or an error, retried after the next burst)."""
    try:
        await db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS}")
        try:
            rows = list(await db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
        finally:
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except (sqlite3.Error, ValueError) as exc:
        log.debug("WAL checkpoint of %s failed: %s", path, exc)
        return False
    if rows and rows[0][0]:
        log.debug("WAL checkpoint of %s postponed: a reader or writer was busy", path)
        return False
    return True


class WalKeeper:
    def __init__(self, checkpoint: Callable[[], Awaitable[None]], after: float) -> None:
        self._checkpoint = checkpoint
        self._after = after
        self._due = 0.0
        self._task: asyncio.Task[None] | None = None
        # Writes committed since the last complete checkpoint.
        self.dirty = False

    def wrote(self) -> None:
        """A write committed: checkpoint once the writes stop for ``after`` seconds."""
        self.dirty = True
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self._after
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="keygate-wal-checkpoint")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Each write moves the deadline on; sleep until the last one's has passed.
        while (delay := self._due - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)
        await self._checkpoint()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.stop(task)
