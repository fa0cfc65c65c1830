"""When a failed delivery is tried again (pure; docs/webhooks.md#retries)."""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from datetime import UTC, datetime

# A receiver's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 86400.0


def next_delay(
    schedule: Sequence[float], attempts: int, retry_after: float | None
) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones, or None
    when the schedule is spent (abandoned). A Retry-After longer than the
    schedule's delay wins."""
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1]
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def retry_after(value: str | None, now: float) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def as_time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
