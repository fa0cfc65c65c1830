"""Traffic notices (key.rate_limited, key.quota_exceeded, key.ip_denied) as webhook events.

The pipeline calls :meth:`TrafficNotices.__call__` on a refusal, on the
request path: it only notes the (key, event) in memory and returns, at most
once per ``cooldown`` per key and event in this process. A background task
writes noted notices to the outbox, where the store keeps the cooldown
across processes and nodes (``Store.traffic_notice``). No store access and
no await on the request path (docs/webhooks.md#events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from keygate.gateway import background
from keygate.gateway.errors import KeygateError
from keygate.gateway.store.base import Store
from keygate.gateway.store.records import utcnow

log = logging.getLogger("keygate.webhooks")

# Keys remembered for the in-process cooldown; past it, the oldest are forgotten
# (the store still keeps the cooldown).
MEMORY = 10_000


class TrafficNotices:
    def __init__(self, store: Store, cooldown: float, ring: Callable[[], None]) -> None:
        self._store = store
        self._cooldown = cooldown
        self._ring = ring
        self._recent: dict[tuple[str, str], float] = {}
        self._noted: set[tuple[str, str]] = set()
        self._bell = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __call__(self, event: str, key_id: str) -> None:
        """A refusal on the request path: returns at once, never raises."""
        pair = (key_id, event)
        now = time.monotonic()
        last = self._recent.get(pair)
        if last is not None and now - last < self._cooldown:
            return
        if len(self._recent) >= MEMORY:
            self._recent.pop(next(iter(self._recent)))
        self._recent[pair] = now
        self._noted.add(pair)
        self._bell.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="traffic notices")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        await self._flush()

    async def _run(self) -> None:
        while True:
            await self._bell.wait()
            self._bell.clear()
            await self._flush()

    async def _flush(self) -> None:
        noted, self._noted = self._noted, set()
        wrote = False
        for key_id, event in noted:
            with contextlib.suppress(KeygateError, OSError):
                wrote = await self._store.traffic_notice(
                    key_id, event, self._cooldown, utcnow()
                ) or wrote
        if wrote:
            self._ring()
