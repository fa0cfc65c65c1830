"""Last-used batcher: records uses in memory, writes them off the request path.

One dict assignment per request; a background task flushes at most one write
per key per ``last_used_flush_interval``. A failed flush is merged back and
retried on the next tick, so a store outage loses no batch while the process
runs (the outage itself is logged once, by the store's health); a graceful
stop flushes once more, and if that last flush fails too the stamps are
dropped — said so, with their count.

Stamps are kept to a resolution (``auth.last_used_resolution``, 60 s by
default): a key whose stamp this process wrote less than that long ago is
left out of the batch, and the store leaves a row alone whose stored stamp is
that recent (another node wrote it). So a key in use costs one row write per
resolution, whatever the number of workers and nodes, instead of one per
flush interval on each of them (bench/scale_model.py); ``last_used_at`` is
then at most that much behind.
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


# At most this many keys' last written stamps are remembered; past it the
# store's own check still keeps the row from being rewritten.
WRITTEN_MEMORY = 100_000


class UsageRecorder:
    def __init__(
        self,
        store: Store,
        interval: float,
        resolution: float = 0.0,
        memory: int = WRITTEN_MEMORY,
    ) -> None:
        self._store = store
        self._interval = interval
        self._resolution = resolution
        self._memory = memory
        self._pending: dict[str, float] = {}
        # key id -> the stamp this process last wrote for it (within the resolution).
        self._written: dict[str, float] = {}
        self.skipped = 0  # stamps left out: written less than a resolution ago
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
        batch, self._pending = self._due(self._pending), {}
        if not batch:
            return
        try:
            await self._store.touch_last_used(batch, self._resolution)
        except (KeygateError, OSError):
            # Keep the newer stamp of each key for the next flush.
            self._merge(batch)
            raise
        except asyncio.CancelledError:
            self._merge(batch)  # stop() cancelled this flush: its final flush writes it
            raise
        self.flushes += 1
        self._remember(batch)

    def _due(self, pending: dict[str, float]) -> dict[str, float]:
        """The stamps at least a resolution newer than the one last written here."""
        resolution = self._resolution
        if resolution <= 0:
            return pending
        written = self._written
        due = {k: t for k, t in pending.items() if t - written.get(k, float("-inf")) >= resolution}
        self.skipped += len(pending) - len(due)
        return due

    def _remember(self, batch: dict[str, float]) -> None:
        if self._resolution <= 0:
            return
        written = self._written
        written.update(batch)
        if len(written) > self._memory:
            # Stamps a resolution old keep nothing out of a batch any more.
            horizon = max(batch.values()) - self._resolution
            self._written = written = {k: t for k, t in written.items() if t > horizon}
            if len(written) > self._memory:
                written.clear()  # the store's check alone, until the next batch

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
