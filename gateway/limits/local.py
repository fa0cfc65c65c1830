"""The ``local`` backend: every rate limit and quota counted in this process's memory.

Exact within a process and nearly free: one GCRA step per policy, no await.
With N workers or nodes each counts for itself, so a rate limit applies to
each of them (docs/reference.md#rate-limits). The GCRA states are a bounded
LRU (``auth.cache_size`` keys): a key pushed out starts again with a whole
burst. Quota counts reach the store with the last-used flush
(:mod:`.counts`).

A request every policy (and the quota, if any) lets through in ``draft``
header mode takes the straight road (:meth:`LocalLimiter.take_now`'s first
half: the GCRA steps inline, the quota counted, the RateLimit fields written
directly); anything else — a refusal, a quota used up, legacy fields — the
general one, which words every case.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.gcra import EPSILON, step, whole_seconds
from keygate.gateway.limits.limiter import Limiter
from keygate.gateway.limits.rules import QUOTA_POLICY, KeyLimits
from keygate.gateway.limits.usage import Room, Usage, usage

Tats = dict[str, float]  # policy name -> theoretical arrival time, from the limiter's origin


class LocalLimiter(Limiter):
    def __init__(self, counts: QuotaCounts, mode: str, size: int) -> None:
        super().__init__(counts, mode)
        # key id -> its policies' states; least recently used first
        self._tats: OrderedDict[str, Tats] = OrderedDict()
        self._size = size
        self._draft = mode == "draft"
        self.origin = self.clock()

    def _states(self, key_id: str) -> Tats:
        states = self._tats
        tats = states.get(key_id)
        if tats is None:
            tats = states[key_id] = {}
            if len(states) > self._size:
                states.popitem(last=False)
        else:
            states.move_to_end(key_id)
        return tats

    def take_now(self, limits: KeyLimits) -> Usage:
        at = self.clock()  # epoch seconds, for quota windows
        now = at - self.origin  # GCRA's time: small floats keep their precision
        tats = self._states(limits.key_id)
        if self._draft:
            policies = limits.policies
            if len(policies) == 1 and limits.quota is None:
                # The common key: one policy, no list to build.
                policy = policies[0]
                tat = tats.get(policy.name)
                base = now if tat is None or tat < now else tat
                new = base + policy.interval
                ahead = new - now
                if ahead - policy.tolerance <= EPSILON:
                    tats[policy.name] = new
                    remaining = int((policy.tolerance - ahead) / policy.interval + 1e-6)
                    return Usage(
                        [
                            ("RateLimit-Policy", limits.policy_field),
                            (
                                "RateLimit",
                                f"{policy.room_head}{remaining};t={math.ceil(ahead - 1e-9)}",
                            ),
                        ]
                    )
                return self._take(limits, at, now, tats)
            items = []
            news = []
            for policy in limits.policies:
                tat = tats.get(policy.name)
                base = now if tat is None or tat < now else tat
                new = base + policy.interval
                ahead = new - now
                if ahead - policy.tolerance > EPSILON:
                    break  # refused: the general road words it
                news.append(new)
                remaining = int((policy.tolerance - ahead) / policy.interval + 1e-6)
                items.append(f"{policy.room_head}{remaining};t={math.ceil(ahead - 1e-9)}")
            else:
                policy_field = limits.policy_field
                quota = limits.quota
                if quota is not None:
                    window, end = self.window(quota.period, at)
                    used = self.counts.used(limits, window)
                    if used >= quota.limit:
                        return self._take(limits, at, now, tats)  # used up: worded there
                    self.counts.add(limits.key_id, window)
                    items.append(
                        f'"{QUOTA_POLICY}";r={quota.limit - used - 1};t={whole_seconds(end - at)}'
                    )
                    item = limits.quota_item(at)
                    policy_field = f"{policy_field}, {item}" if policy_field else item
                for policy, new in zip(limits.policies, news, strict=True):
                    tats[policy.name] = new
                return Usage([("RateLimit-Policy", policy_field), ("RateLimit", ", ".join(items))])
        return self._take(limits, at, now, tats)

    def _take(self, limits: KeyLimits, at: float, now: float, tats: Tats) -> Usage:
        """Every case: refusals, the quota, any header mode."""
        key_id = limits.key_id
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
