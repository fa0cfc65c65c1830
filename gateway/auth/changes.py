"""Change feed consumer: applies other processes' changes to this worker's cache.

Every store write appends change notices in its own transaction. Here we poll a
cheap counter (SQLite's ``PRAGMA data_version``, or the newest change
sequence) and only read notices when it moved, so the idle cost is one trivial
query per ``store.change_poll_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from keygate.gateway import background
from keygate.gateway.errors import KeygateError
from keygate.gateway.store.base import Store

log = logging.getLogger("keygate.changes")

Apply = Callable[[str, str], Awaitable[None]]


class ChangeWatcher:
    def __init__(self, store: Store, apply: Apply, interval: float) -> None:
        self._store = store
        self._apply = apply
        self._interval = interval
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._last_version: int | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._seq = await self._store.change_seq()
        self._task = asyncio.create_task(self._run(), name="keygate-changes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.stop(task)

    async def poll(self) -> int:
        """Apply every notice newer than the last one seen; return how many."""
        async with self._lock:
            return await self._poll()

    async def _poll(self) -> int:
        changes = await self._store.changes_since(self._seq)
        for change in changes:
            await self._apply(change.kind, change.ref)
            self._seq = max(self._seq, change.seq)
        return len(changes)

    async def tick(self) -> None:
        """One check: read notices only when the cheap probe says something moved.

        One at a time: a tick that saw the probe move owns the notices until
        they are applied, so a concurrent one (a verifier's catch-up beside
        the poll loop) must not return "nothing new" before that.
        """
        async with self._lock:
            version = await self._store.data_version()
            if version is not None:
                if version == self._last_version:
                    return
                self._last_version = version
            await self._poll()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            # The store's outage is logged once by its health (store/health.py).
            try:
                await self.tick()
                if self._failing:
                    log.debug("change feed recovered")
                    self._failing = False
            except (KeygateError, OSError) as exc:
                self._last_version = None
                if not self._failing:
                    log.debug("change feed unavailable: %s", type(exc).__name__)
                    self._failing = True


class ChangeFeed:
    """One process's change feed: the poll loop, and on PostgreSQL the
    LISTEN/NOTIFY listener that wakes it at once (the loop stays the fallback
    while the listener is down)."""

    def __init__(self, store: Store, apply: Apply, interval: float) -> None:
        self.watcher = ChangeWatcher(store, apply, interval)
        self._listener = store.listener(self.watcher.poll)

    async def start(self) -> None:
        await self.watcher.start()
        if self._listener is not None:
            try:
                await self._listener.start()
            except BaseException:
                await self.watcher.stop()
                raise

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
        await self.watcher.stop()

    async def tick(self) -> None:
        """Apply what is pending now (see :meth:`ChangeWatcher.tick`)."""
        await self.watcher.tick()
