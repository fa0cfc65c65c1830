"""Last-used batcher: records uses in memory, writes them off the request path.

One dict assignment per request; a background task flushes at most one write
per key per ``last_used_flush_interval``. A failed flush is merged back and
retried on the next tick, so a store outage loses no batch while the process
runs (the outage itself is logged once, by the store's health); a graceful
stop flushes once more, and if that last flush fails too the stamps are
dropped — said so, with their count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from keygate.gateway import background
from keygate.gateway.errors import KeygateError
from keygate.gateway.store.base import Store

log = logging.getLogger("keygate.usage")


class UsageRecorder:
    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        # Other batches written on the same beat (quota counts: gateway/limits/counts.py).
        self._also: list[Callable[[], Awaitable[None]]] = []

    def also_flush(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Run ``flush`` after each of this batcher's flushes, and at stop."""
        self._also.append(flush)

    def touch(self, key_id: str, now: float | None = None) -> None:
        self._pending[key_id] = time.time() if now is None else now

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Write the pending stamps, then the other batches; a failed write
        keeps its batch for the next flush."""
        try:
            await self._write()
        except (KeygateError, OSError) as exc:
            log.debug("last-used flush failed (%s); kept for the next one", type(exc).__name__)
        for flush in self._also:
            await flush()

    async def _write(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._store.touch_last_used(batch)
        except (KeygateError, OSError):
            # Keep the newer stamp of each key for the next flush.
            self._merge(batch)
            raise
        except asyncio.CancelledError:
            self._merge(batch)  # stop() cancelled this flush: its final flush writes it
            raise
        self.flushes += 1

    def _merge(self, batch: dict[str, float]) -> None:
        for key_id, stamp in batch.items():
            if self._pending.get(key_id, 0.0) < stamp:
                self._pending[key_id] = stamp

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keygate-usage")

    async def stop(self) -> None:
        """Stop the loop and make the last flush; nothing retries after it."""
        task, self._task = self._task, None
        await background.stop(task)
        try:
            await self._write()
        except (KeygateError, OSError) as exc:
            dropped, self._pending = len(self._pending), {}
            log.warning(
                "stopping with the store unavailable (%s): last-used stamps of %d "
                "key%s dropped",
                type(exc).__name__,
                dropped,
                "" if dropped == 1 else "s",
            )
        for flush in self._also:
            await flush()
