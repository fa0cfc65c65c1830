"""Quota counts on their way to the store, flushed with the last-used batcher.

Every request a quota lets through is counted here, per (key, window), and
``flush`` adds the counts to the store in one transaction
(``Store.add_quota_used``), which answers each key's total across every
worker and node. A process's view of a key's use is that total plus what it
counted since: with N processes, each of them can be behind the others by
what they let through within one flush interval — the local backend's
documented overshoot. A failed flush is merged back and retried: a store
outage loses no count. Never one store write per request.
"""

from __future__ import annotations

import asyncio
import logging

from cachetools import LRUCache

from keygate.gateway.errors import KeygateError
from keygate.gateway.limits.rules import KeyLimits
from keygate.gateway.store.base import Store

log = logging.getLogger("keygate.limits")

Counts = dict[tuple[str, str], int]  # (key id, window) -> requests


class QuotaCounts:
    def __init__(self, store: Store, size: int) -> None:
        self._store = store
        # key id -> (window, total) as the store last answered; bounded like the key cache.
        self._totals: LRUCache[str, tuple[str | None, int]] = LRUCache(size)
        self._pending: Counts = {}
        self._inflight: Counts = {}
        self.flushes = 0

    def used(self, limits: KeyLimits, window: str) -> int:
        """What the quota window holds for this key, as this process knows it."""
        key_id = limits.key_id
        try:
            known, total = self._totals[key_id]
        except KeyError:
            known, total = self._totals[key_id] = (limits.quota_window, limits.quota_used)
        count = total if known == window else 0
        slot = (key_id, window)
        return count + self._pending.get(slot, 0) + self._inflight.get(slot, 0)

    def known_total(self, limits: KeyLimits, window: str) -> int:
        """The store's total for the window, as last read (the Redis floor)."""
        known, total = self._totals.get(limits.key_id, (limits.quota_window, limits.quota_used))
        return total if known == window else 0

    def add(self, key_id: str, window: str) -> None:
        slot = (key_id, window)
        pending = self._pending
        pending[slot] = pending.get(slot, 0) + 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        if not self._pending or self._inflight:
            return
        batch = self._inflight = self._pending
        self._pending = {}
        try:
            totals = await self._store.add_quota_used(batch)
        except (KeygateError, OSError) as exc:
            self._merge(batch)
            log.debug("quota count flush failed (%s); kept for the next one", type(exc).__name__)
            return
        except asyncio.CancelledError:
            self._merge(batch)  # the final flush at stop writes it
            raise
        finally:
            self._inflight = {}
        for key_id, total in totals.items():
            self._totals[key_id] = total
        self.flushes += 1

    def _merge(self, batch: Counts) -> None:
        for slot, count in batch.items():
            self._pending[slot] = self._pending.get(slot, 0) + count
