"""One counted request's outcome: allowed or refused, and what its answer tells.

Both backends build a :class:`Usage` from the same numbers (per rate limit
``remaining``/``reset``, the quota's, the wait of each refusing policy), so
the 429s and the header fields are worded here once:

- ``RateLimit-Policy`` and ``RateLimit`` in the syntax of
  draft-ietf-httpapi-ratelimit-headers-11 (§3, §4): structured-field lists
  (RFC 8941 §3.1) of ``"name";q=…;w=…`` and ``"name";r=…;t=…``, one member per
  rate limit, then ``"quota"``;
- legacy ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (seconds), for
  the policy with the least room left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from keygate.gateway.errors import TooManyRequests
from keygate.gateway.limits.gcra import whole_seconds
from keygate.gateway.limits.rules import QUOTA_POLICY, KeyLimits

Pairs = list[tuple[str, str]]

DRAFT: Final = frozenset({"draft", "both"})
LEGACY: Final = frozenset({"legacy", "both"})
# Header names keygate writes in legacy mode: an upstream's own are dropped
# (one value each: two would contradict each other).
LEGACY_NAMES: Final = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@dataclass(frozen=True, slots=True)
class Room:
    """One policy's state after a request: RateLimit's ``r`` and ``t``."""

    name: str
    quota: int  # q
    remaining: int  # r
    reset: int  # t, whole seconds rounded up


@dataclass(slots=True, eq=False)
class Usage:
    """A counted request: the header fields its answer carries, and the 429 if refused."""

    fields: Pairs  # header pairs for every answer to this request
    refusal: TooManyRequests | None = None

    def check(self) -> None:
        if self.refusal is not None:
            raise self.refusal


NO_FIELDS: Final = Usage([])


def usage(
    limits: KeyLimits,
    mode: str,
    now: float,
    rooms: Sequence[Room],
    *,
    rate_waits: Sequence[tuple[str, float]] = (),
    quota_wait: float | None = None,
) -> Usage:
    """The outcome of one request.

    ``rate_waits`` holds (name, seconds) of each rate limit that refused;
    ``quota_wait`` the seconds until the quota resets when it refused (only
    asked when every rate limit allowed).
    """
    refusal = None
    if rate_waits:
        refusal = TooManyRequests(
            "rate_limited",
            [name for name, _ in rate_waits],
            whole_seconds(max(wait for _, wait in rate_waits)),
        )
    elif quota_wait is not None:
        refusal = TooManyRequests("quota_exceeded", [QUOTA_POLICY], whole_seconds(quota_wait))
    return Usage(header_fields(limits, mode, now, rooms), refusal)


def header_fields(limits: KeyLimits, mode: str, now: float, rooms: Sequence[Room]) -> Pairs:
    """The RateLimit header pairs of ``mode`` (draft, legacy, both, none)."""
    out: Pairs = []
    if mode in DRAFT:
        policy = limits.policy_field
        if limits.quota is not None:
            item = limits.quota_item(now)
            policy = f"{policy}, {item}" if policy else item
        out.append(("RateLimit-Policy", policy))
        if rooms:
            out.append(
                ("RateLimit", ", ".join(f'"{r.name}";r={r.remaining};t={r.reset}' for r in rooms))
            )
    if mode in LEGACY and rooms:
        tight = min(rooms, key=lambda r: (r.remaining, -r.reset))
        out += [
            ("X-RateLimit-Limit", str(tight.quota)),
            ("X-RateLimit-Remaining", str(tight.remaining)),
            ("X-RateLimit-Reset", str(tight.reset)),
        ]
    return out
