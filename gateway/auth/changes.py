"""Change feed consumer: applies other processes' changes to this worker's cache.

Every store write appends change notices in its own transaction. Here we poll a
cheap counter (SQLite's ``PRAGMA data_version``, or the newest change
sequence) and only read notices when it moved, so the idle cost is one trivial
query per ``store.change_poll_interval``.

When the store can read that counter synchronously on the loop (SQLite's
loop-read connection: a few microseconds, no thread hand-off), the probe is a
plain timer callback, and a task runs only when the counter moved: an idle
probe costs about half what a round trip to the reader thread did
(bench/results.md).

The poll is the fallback. A store that can push (PostgreSQL's LISTEN/NOTIFY,
SQLite's wake-ups between processes: ``store/sqlite/wake.py``) has its
``listener`` call :meth:`ChangeWatcher.poll` the moment another process commits.
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
    def __init__(
        self,
        store: Store,
        apply: Apply,
        interval: float,
        pushed: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        # True while every commit is pushed to this process (a live LISTEN): the
        # poll loop then rests, so an idle node costs the database no query.
        self._pushed = pushed
        self._apply = apply
        self._interval = interval
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._last_version: int | None = None
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._ticking: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._seq = await self._store.change_seq()
        if self._store.data_version_now() is not None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._probe)
        else:
            self._task = asyncio.create_task(self._run(), name="keygate-changes")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        await background.stop(task)
        ticking, self._ticking = self._ticking, None
        await background.stop(ticking)

    def _probe(self) -> None:
        """The probe on the loop: a timer callback, a task only when the counter moved
        (none while the last one still reads the notices)."""
        loop = asyncio.get_running_loop()
        ticking = self._ticking
        if ticking is None or ticking.done():
            version = self._store.data_version_now()
            if version is None:  # the loop's connection is gone: poll as other stores do
                self._timer = None
                self._task = loop.create_task(self._run(), name="keygate-changes")
                return
            if version != self._last_version:
                self._ticking = loop.create_task(
                    self._checked_tick(version), name="keygate-changes"
                )
        self._timer = loop.call_later(self._interval, self._probe)

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

    async def tick(self, seen: int | None = None) -> None:
        """One check: read notices only when the cheap probe says something moved
        (``seen``: what the probe on the loop just read).

        One at a time: a tick that saw the probe move owns the notices until
        they are applied, so a concurrent one (a verifier's catch-up beside
        the poll loop) must not return "nothing new" before that.
        """
        async with self._lock:
            version = seen if seen is not None else self._store.data_version_now()
            if version is None:
                version = await self._store.data_version()
            if version is not None:
                if version == self._last_version:
                    return
                self._last_version = version
            await self._poll()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._pushed is not None and self._pushed():
                continue
            await self._checked_tick()

    async def _checked_tick(self, seen: int | None = None) -> None:
        # The store's outage is logged once by its health (store/health.py).
        try:
            await self.tick(seen)
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
        self.watcher = ChangeWatcher(store, apply, interval, self._pushed)
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

    def _pushed(self) -> bool:
        listener = self._listener
        return listener is not None and listener.delivers_all()

    async def tick(self) -> None:
        """Apply what is pending now (see :meth:`ChangeWatcher.tick`)."""
        await self.watcher.tick()
