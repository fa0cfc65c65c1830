"""The generic cell rate algorithm (GCRA, ITU-T I.371 as a virtual scheduling
algorithm), one policy at a time (docs/reference.md#rate-limits).

A policy of ``limit`` requests per ``window`` seconds emits one request every
``T = window / limit`` seconds; ``burst`` requests may come at once
(tolerance ``tau = burst * T``). Its whole state is the theoretical arrival
time ``tat``: a request at ``now`` is allowed when ``max(tat, now) + T - tau
<= now``, and then moves ``tat`` to ``max(tat, now) + T``. Pure and float
seconds here (the local backend counts them from its own start, so they stay
precise); the Redis script (``script.lua``) is the same arithmetic in
integer microseconds on Redis's clock.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

# Float seconds are not exact: a request within a nanosecond of conforming
# conforms (the backends' clocks count microseconds).
EPSILON: Final = 1e-9


class Step(NamedTuple):
    """One policy's answer to one request."""

    allowed: bool
    tat: float  # the state to keep (unchanged when refused)
    remaining: int  # requests that could still come at once (RateLimit's r)
    reset: float  # seconds until the burst is whole again (RateLimit's t)
    wait: float  # refused: seconds until this policy would allow it


def step(tat: float | None, now: float, interval: float, tolerance: float) -> Step:
    """Whether a request at ``now`` conforms, and the state after it."""
    base = now if tat is None or tat < now else tat
    new = base + interval
    allow_at = new - tolerance
    if allow_at - now > EPSILON:
        return Step(False, base, 0, base - now, allow_at - now)
    return Step(True, new, int((tolerance - (new - now)) / interval + 1e-6), new - now, 0.0)


def whole_seconds(seconds: float) -> int:
    """Seconds for a header (Retry-After, ``t``): whole, rounded up (RFC 9110 §10.2.3)."""
    return math.ceil(seconds - 1e-9) if seconds > 0 else 0
