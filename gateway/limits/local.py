"""The ``local`` backend: every rate limit and quota counted in this process's memory.

Exact within a process and nearly free: one GCRA step per policy, no await.
With N workers or nodes each counts for itself, so a rate limit applies to
each of them (docs/reference.md#rate-limits). The GCRA states are a bounded
LRU (``auth.cache_size`` keys): a key pushed out starts again with a whole
burst. Quota counts reach the store with the last-used flush
(:mod:`.counts`).
"""

from __future__ import annotations

from cachetools import LRUCache

from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.gcra import step, whole_seconds
from keygate.gateway.limits.limiter import Limiter
from keygate.gateway.limits.rules import QUOTA_POLICY, KeyLimits
from keygate.gateway.limits.usage import Room, Usage, usage


class LocalLimiter(Limiter):
    def __init__(self, counts: QuotaCounts, mode: str, size: int) -> None:
        super().__init__(counts, mode)
        # key id -> {policy name: theoretical arrival time, from self.origin}
        self._tats: LRUCache[str, dict[str, float]] = LRUCache(size)
        self.origin = self.clock()

    def take_now(self, limits: KeyLimits) -> Usage:
        at = self.clock()  # epoch seconds, for quota windows
        now = at - self.origin  # GCRA's time: small floats keep their precision
        key_id = limits.key_id
        try:
            tats = self._tats[key_id]
        except KeyError:
            tats = self._tats[key_id] = {}
        rooms: list[Room] = []
        steps = []
        waits: list[tuple[str, float]] = []
        for policy in limits.policies:
            s = step(tats.get(policy.name), now, policy.interval, policy.tolerance)
            steps.append(s)
            if not s.allowed:
                waits.append((policy.name, s.wait))
        quota = limits.quota
        quota_wait = None
        if quota is not None:
            window, end = self.window(quota.period, at)
            used = self.counts.used(limits, window)
            if not waits and used >= quota.limit:
                quota_wait = end - at
        taken = not waits and quota_wait is None
        for policy, s in zip(limits.policies, steps, strict=True):
            if taken:
                tats[policy.name] = s.tat
                rooms.append(Room(policy.name, policy.limit, s.remaining, whole_seconds(s.reset)))
            elif s.allowed:  # not counted: as it stood before this request
                reset = whole_seconds(s.reset - policy.interval)
                rooms.append(Room(policy.name, policy.limit, s.remaining + 1, reset))
            else:
                rooms.append(Room(policy.name, policy.limit, 0, whole_seconds(s.reset)))
        if quota is not None:
            if taken:
                self.counts.add(key_id, window)
                used += 1
            left = quota.limit - used if used < quota.limit else 0
            rooms.append(Room(QUOTA_POLICY, quota.limit, left, whole_seconds(end - at)))
        return usage(limits, self.mode, at, rooms, rate_waits=waits, quota_wait=quota_wait)

    async def take(self, limits: KeyLimits) -> Usage:
        return self.take_now(limits)
