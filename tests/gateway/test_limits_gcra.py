"""GCRA and quota windows against reference models, with a controlled clock
(docs/reference.md#rate-limits, #quotas).

The reference for a rate limit is a leaky bucket in exact fractions — the
continuous-state algorithm that GCRA is equivalent to (ITU-T I.371): the
bucket holds ``level`` requests, drains ``limit / window`` a second, and takes
a request when it still fits under ``burst``. The limiter under test is the
real :class:`LocalLimiter` (one GCRA state per policy, floats).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate.gateway.limits import windows
from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.local import LocalLimiter
from keygate.gateway.limits.rules import key_limits
from keygate.gateway.limits.usage import Usage


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStore:
    """Only what QuotaCounts asks of a store: the totals, added up."""

    def __init__(self) -> None:
        self.totals: dict[str, tuple[str, int]] = {}

    async def add_quota_used(self, counts: Mapping[tuple[str, str], int]) -> dict[str, Any]:
        for (key_id, window), n in sorted(counts.items(), key=lambda c: c[0][::-1]):
            known, total = self.totals.get(key_id, (None, 0))
            self.totals[key_id] = (window, total + n if known == window else n)
        return dict(self.totals)


def limiter(clock: Clock, mode: str = "draft") -> LocalLimiter:
    lim = LocalLimiter(QuotaCounts(FakeStore(), 1000), mode, 1000)  # type: ignore[arg-type]
    lim.clock = clock
    lim.origin = clock.now
    return lim


def limits_of(*policies: tuple[int, int, int | None], quota: dict[str, Any] | None = None):
    rate = [
        {"name": f"p{i}", "limit": limit, "window": window, "burst": burst}
        for i, (limit, window, burst) in enumerate(policies)
    ]
    found = key_limits("k" * 12, rate, quota, [])
    assert found is not None
    return found


class Bucket:
    """The reference: a leaky bucket in exact arithmetic."""

    def __init__(self, limit: int, window: int, burst: int | None) -> None:
        self.rate = Fraction(limit, window)  # drained per second
        self.capacity = burst or limit
        self.level = Fraction(0)
        self.at = Fraction(0)

    def offer(self, at: Fraction) -> tuple[bool, int, int, int]:
        """(allowed, remaining, reset seconds, retry-after seconds) at time ``at``."""
        self.level = max(Fraction(0), self.level - (at - self.at) * self.rate)
        self.at = at
        if self.level + 1 <= self.capacity:
            self.level += 1
            return True, math.floor(self.capacity - self.level), _up(self.level / self.rate), 0
        wait = (self.level + 1 - self.capacity) / self.rate
        return False, 0, _up(self.level / self.rate), _up(wait)


def _up(seconds: Fraction) -> int:
    return math.ceil(seconds)


def ratelimit_items(result: Usage) -> dict[str, tuple[int, int]]:
    fields = dict(result.fields)
    out = {}
    for item in fields["RateLimit"].split(", "):
        name, r, t = item.split(";")
        out[name.strip('"')] = (int(r[2:]), int(t[2:]))
    return out


# --- GCRA against the bucket ----------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 500),
    window=st.integers(1, 3600),
    burst=st.one_of(st.none(), st.integers(1, 50)),
    gaps=st.lists(st.integers(0, 5000), min_size=1, max_size=60),  # milliseconds
)
def test_gcra_matches_the_leaky_bucket(
    limit: int, window: int, burst: int | None, gaps: list[int]
) -> None:
    clock = Clock(1_000_000.0)
    lim = limiter(clock)
    limits = limits_of((limit, window, burst))
    bucket = Bucket(limit, window, burst)
    elapsed = 0
    for gap in gaps:
        elapsed += gap
        clock.now = 1_000_000.0 + elapsed / 1000
        allowed, remaining, reset, retry = bucket.offer(Fraction(elapsed, 1000))
        result = lim.take_now(limits)
        assert (result.refusal is None) is allowed, (elapsed, bucket.level)
        r, t = ratelimit_items(result)["p0"]
        if allowed:
            assert (r, t) == (remaining, reset)
        else:
            assert r == 0 and t == reset
            assert result.refusal is not None
            assert result.refusal.headers == {"Retry-After": str(retry)}
            assert result.refusal.details == {"violated_policies": ["p0"]}


def test_gcra_burst_then_steady_rate() -> None:
    clock = Clock(5000.0)
    lim = limiter(clock)
    limits = limits_of((10, 60, 3))  # one request every 6 s, three at once
    codes = [lim.take_now(limits).refusal is None for _ in range(5)]
    assert codes == [True, True, True, False, False]
    refused = lim.take_now(limits)
    assert refused.refusal is not None and refused.refusal.headers == {"Retry-After": "6"}
    clock.now += 5.999
    assert lim.take_now(limits).refusal is not None
    assert lim.take_now(limits).refusal.headers == {"Retry-After": "1"}  # 0.001 s, rounded up
    clock.now += 0.001
    allowed = lim.take_now(limits)
    assert allowed.refusal is None
    assert ratelimit_items(allowed) == {"p0": (0, 18)}
    # The burst used up: at the steady rate every request passes, none sooner.
    for _ in range(10):
        clock.now += 6
        assert lim.take_now(limits).refusal is None
        assert lim.take_now(limits).refusal is not None


def test_gcra_fresh_key_headers_show_the_whole_burst_less_one() -> None:
    clock = Clock(1.0)
    limits = limits_of((100, 60, None))
    first = limiter(clock).take_now(limits)
    assert dict(first.fields) == {
        "RateLimit-Policy": '"p0";q=100;w=60',
        "RateLimit": '"p0";r=99;t=1',  # 0.6 s to a whole burst again, rounded up
    }


def test_gcra_several_policies_all_must_allow_and_only_then_count() -> None:
    clock = Clock(100.0)
    lim = limiter(clock)
    limits = limits_of((1, 1, None), (2, 60, None))  # 1 a second and 2 a minute
    first, second = lim.take_now(limits), lim.take_now(limits)
    assert first.refusal is None
    refusal = second.refusal
    assert refusal is not None and refusal.code == "rate_limited"
    assert refusal.details == {"violated_policies": ["p0"]}
    assert refusal.headers == {"Retry-After": "1"}
    # The refused request took nothing from the minute's policy.
    assert ratelimit_items(second) == {"p0": (0, 1), "p1": (1, 30)}
    clock.now += 1
    assert lim.take_now(limits).refusal is None
    refusal = lim.take_now(limits).refusal
    assert refusal is not None
    assert refusal.details == {"violated_policies": ["p0", "p1"]}
    assert refusal.headers == {"Retry-After": "29"}  # the longer wait of the two


@pytest.mark.parametrize(
    ("mode", "names"),
    [
        ("draft", ["RateLimit-Policy", "RateLimit"]),
        ("legacy", ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]),
        (
            "both",
            [
                "RateLimit-Policy",
                "RateLimit",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
        ),
        ("none", []),
    ],
)
def test_header_modes(mode: str, names: list[str]) -> None:
    clock = Clock(10.0)
    limits = limits_of((100, 60, None), (3, 1, None))
    result = limiter(clock, mode).take_now(limits)
    assert [n for n, _ in result.fields] == names
    fields = dict(result.fields)
    if mode in ("legacy", "both"):
        # The policy with the least room left: 3 a second, 2 left.
        assert fields["X-RateLimit-Limit"] == "3"
        assert fields["X-RateLimit-Remaining"] == "2"
        assert fields["X-RateLimit-Reset"] == "1"


# --- quota windows across midnight and month ends -------------------------------------
def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("moment", "period", "name", "ends"),
    [
        ("2026-12-31T23:59:59.999", "day", "2026-12-31", "2027-01-01T00:00:00"),
        ("2027-01-01T00:00:00", "day", "2027-01-01", "2027-01-02T00:00:00"),
        ("2026-12-31T23:59:59.999", "month", "2026-12", "2027-01-01T00:00:00"),
        ("2027-01-01T00:00:00", "month", "2027-01", "2027-02-01T00:00:00"),
        ("2027-02-28T12:00:00", "month", "2027-02", "2027-03-01T00:00:00"),
        ("2028-02-29T23:59:59", "day", "2028-02-29", "2028-03-01T00:00:00"),
        ("2028-02-29T23:59:59", "month", "2028-02", "2028-03-01T00:00:00"),
        ("2026-04-30T23:59:59", "month", "2026-04", "2026-05-01T00:00:00"),
    ],
)
def test_quota_window_names_and_ends(moment: str, period: str, name: str, ends: str) -> None:
    assert windows.window(period, at(moment)) == (name, at(ends))


@pytest.mark.parametrize(
    ("before", "after", "period"),
    [
        ("2026-12-31T23:59:58", "2027-01-01T00:00:00", "day"),
        ("2026-11-30T23:59:59", "2026-12-01T00:00:00.5", "month"),
        ("2027-02-28T23:59:59", "2027-03-01T00:00:01", "month"),
    ],
)
async def test_quota_resets_when_the_window_ends(before: str, after: str, period: str) -> None:
    clock = Clock(at(before))
    lim = limiter(clock)
    limits = limits_of(quota={"limit": 3, "period": period})
    taken = [lim.take_now(limits) for _ in range(4)]
    assert [t.refusal is None for t in taken] == [True, True, True, False]
    refusal = taken[3].refusal
    assert refusal is not None and refusal.code == "quota_exceeded"
    assert refusal.details == {"violated_policies": ["quota"]}
    end = windows.window(period, clock.now)[1]
    assert refusal.headers == {"Retry-After": str(math.ceil(end - clock.now))}
    assert dict(taken[2].fields)["RateLimit"] == f'"quota";r=0;t={math.ceil(end - clock.now)}'
    await lim.counts.flush()  # the old window's counts reach the store
    clock.now = at(after)
    again = lim.take_now(limits)
    assert again.refusal is None
    assert dict(again.fields)["RateLimit"].startswith('"quota";r=2;')
    await lim.counts.flush()
    store = lim.counts._store  # type: ignore[attr-defined]
    assert store.totals["k" * 12] == (windows.window(period, clock.now)[0], 1)


def test_quota_policy_field_gives_the_calendar_window() -> None:
    clock = Clock(at("2027-02-10T00:00:00"))
    limits = limits_of((100, 60, None), quota={"limit": 1000, "period": "month"})
    fields = dict(limiter(clock).take_now(limits).fields)
    assert fields["RateLimit-Policy"] == f'"p0";q=100;w=60, "quota";q=1000;w={28 * 86400}'


@pytest.mark.parametrize(
    ("moment", "days"),
    [
        ("2027-02-28T23:59:59", 28),
        ("2027-03-01T00:00:00", 31),  # the day after: remembered per day, not per month
        ("2028-02-29T12:00:00", 29),
        ("2026-04-30T23:59:59", 30),
        ("2026-12-31T23:59:59.999", 31),
    ],
)
def test_quota_month_length_follows_the_calendar(moment: str, days: int) -> None:
    assert windows.length("month", at(moment)) == days * 86400
    assert windows.length("month", at(moment)) == days * 86400  # remembered: the same
    assert windows.length("day", at(moment)) == 86400


def test_quota_counts_what_other_processes_flushed() -> None:
    """The local backend's view: the store's total (read back at each flush) plus
    what this process counted since; a key starts from what the store held."""
    clock = Clock(at("2026-12-05T10:00:00"))
    lim = limiter(clock)
    limits = key_limits("q" * 12, [], {"limit": 10, "period": "day"}, [], 8, "2026-12-05")
    assert limits is not None
    assert [lim.take_now(limits).refusal is None for _ in range(3)] == [True, True, False]
    stale = key_limits("r" * 12, [], {"limit": 10, "period": "day"}, [], 8, "2026-12-04")
    assert stale is not None  # yesterday's count does not count today
    assert sum(lim.take_now(stale).refusal is None for _ in range(12)) == 10


def _general(lim: LocalLimiter, limits: Any) -> Usage:
    """The general road for the same request (what the straight road must equal)."""
    at = lim.clock()
    return lim._take(limits, at, at - lim.origin, lim._states(limits.key_id))


@pytest.mark.parametrize(
    "policies",
    [(), ((5, 1, None),), ((5, 1, None), (100, 60, 3))],
    ids=["quota alone", "a rate limit and the quota", "two rate limits and the quota"],
)
def test_quota_straight_road_answers_as_the_general_one(policies: tuple[Any, ...]) -> None:
    """Request by request, through a quota of 4 running out and rate limits
    refusing: the same fields, refusals and counts either way."""
    limits = limits_of(*policies, quota={"limit": 4, "period": "day"})
    clock = Clock(at("2027-02-10T10:00:00"))
    fast, slow = limiter(clock), limiter(clock)
    for i in range(8):
        clock.now += 0.05 * (i % 3)
        a, b = fast.take_now(limits), _general(slow, limits)
        assert a.fields == b.fields, i
        assert (a.refusal is None) == (b.refusal is None), i
        if a.refusal is not None:
            assert b.refusal is not None
            assert (a.refusal.code, a.refusal.headers) == (b.refusal.code, b.refusal.headers)
        assert fast.counts._pending == slow.counts._pending, i
