"""Quota windows: UTC calendar days and months (docs/reference.md#quotas).

A window is named by its first day, ``"2026-12-01"`` for a day and
``"2026-12"`` for a month: names of one period sort in time order, and a
name of the other period never equals one of this period (so a changed
period starts a new count).
"""

from __future__ import annotations

import calendar
import functools
import time
from typing import Final

DAY: Final = 86400
PERIODS: Final = ("day", "month")


def window(period: str, now: float) -> tuple[str, float]:
    """(name, end as epoch seconds) of the ``period`` window holding ``now``."""
    name, _, end = bounds(period, now)
    return name, end


def bounds(period: str, now: float) -> tuple[str, float, float]:
    """(name, start, end) of the ``period`` window holding ``now``, in epoch seconds."""
    days = int(now // DAY)
    year, month, day = time.gmtime(days * DAY)[:3]
    if period == "day":
        return f"{year:04d}-{month:02d}-{day:02d}", float(days * DAY), float((days + 1) * DAY)
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    if month == 12:
        end = calendar.timegm((year + 1, 1, 1, 0, 0, 0))
    else:
        end = calendar.timegm((year, month + 1, 1, 0, 0, 0))
    return f"{year:04d}-{month:02d}", float(start), float(end)


def length(period: str, now: float) -> int:
    """Seconds in the ``period`` window holding ``now`` (RateLimit-Policy's ``w``).

    Asked on every counted request with a quota (its RateLimit-Policy item):
    the month's length is remembered per UTC day, not recomputed."""
    if period == "day":
        return DAY
    return _month_seconds(int(now // DAY))


@functools.lru_cache(maxsize=64)
def _month_seconds(day: int) -> int:
    year, month = time.gmtime(day * DAY)[:2]
    return calendar.monthrange(year, month)[1] * DAY
