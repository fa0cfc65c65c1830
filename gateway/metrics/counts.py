"""What one process counts, as plain integers (docs/reference.md#metrics).

Counting is on the hot path of every request, so it is a dict increment and,
for the durations, a bisect and a list increment — no lock, no object per
label set, no prometheus-client call (its counters take a lock per
increment; bench/results.md compares). The numbers are turned into metric
families only when scraped (:mod:`.exposition`).

**No label value comes from a request.** The route is a configured route's
name or one of :data:`NO_ROUTE` / :data:`ADMIN`; the method is one of
:data:`METHODS` or ``OTHER``; the code is a status keygate or an upstream
answered, a known one or its class (``5xx``); a decision's result is
``allowed``, ``public`` or one of the refusal codes of :data:`REFUSALS`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

# Seconds, from 0.5 ms to 60 s (the upper bounds of the histogram's buckets).
BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
)
NO_ROUTE: Final = "_none"  # no route matched, or refused before one was (route names
ADMIN: Final = "_admin"  # start with a letter or digit: these never collide)
PROXY: Final = "proxy"
FORWARD_AUTH: Final = "forward_auth"
ADMIN_MODE: Final = "admin"
# Refusals that are decisions about a key (keygate_auth_decisions_total{result}).
REFUSALS: Final = frozenset(
    (
        "missing_api_key",
        "invalid_api_key",
        "key_disabled",
        "key_expired",
        "ambiguous_api_key",
        "forbidden",
        "ip_not_allowed",
        "rate_limited",
        "quota_exceeded",
        "ratelimit_unavailable",
        "untrusted_proxy",
    )
)
# Failures on the way to an upstream, after the decision (keygate_upstream_errors_total).
UPSTREAM_ERRORS: Final = {
    "upstream_unavailable": "unavailable",
    "upstream_timeout": "timeout",
    "upstream_busy": "busy",
}
_CODES: Final = {s.value: str(s.value) for s in HTTPStatus}


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def code_label(status: int) -> str:
    found = _CODES.get(status)
    if found is not None:
        return found
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class Histogram:
    """Bucket counts (not cumulative; the last is +Inf) and the sum of one series."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Counts:
    """Every counter and histogram of one process, by label values."""

    __slots__ = (
        "busy",
        "decisions",
        "durations",
        "in_flight",
        "requests",
        "upstream",
        "upstream_errors",
        "webhook_backlog",
        "webhooks",
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.upstream: dict[str, Histogram] = {}
        self.decisions: dict[tuple[str, str], int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.in_flight = 0  # aiohttp's requests in flight
        # The webhook deliverer's attempts by (event, result), and the deliveries
        # waiting as it last counted them (store-wide: the gauge is a max over
        # processes, not a sum).
        self.webhooks: dict[tuple[str, str], int] = {}
        self.webhook_backlog = 0
        # The edges' requests in flight, read when scraped (each edge counts its own).
        self.busy: list[Callable[[], int]] = []

    def request(
        self,
        route: str | None,
        method: str,
        status: int,
        seconds: float,
        code: str | None,
        key_id: str | None,
        mode: str,
    ) -> None:
        """One answered request: ``code`` is keygate's refusal code, if it refused."""
        route = route or NO_ROUTE
        key = (route, method if method in METHODS else "OTHER", code_label(status))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        durations = self.durations
        histogram = durations.get(route)
        if histogram is None:
            histogram = durations[route] = Histogram()
        histogram.counts[bisect_left(BUCKETS, seconds)] += 1
        histogram.sum += seconds
        if code is None:
            result = "allowed" if key_id is not None else ("public" if route[0] != "_" else None)
        elif code in REFUSALS:
            result = code
        else:
            reason = UPSTREAM_ERRORS.get(code)
            if reason is not None:
                errors = self.upstream_errors
                errors[(route, reason)] = errors.get((route, reason), 0) + 1
                result = "allowed" if key_id is not None else "public"
            else:
                result = None  # refused before any decision (bad path, no route)
        if result is not None:
            decisions = self.decisions
            pair = (result, mode)
            decisions[pair] = decisions.get(pair, 0) + 1

    def upstream_time(self, route: str, seconds: float) -> None:
        """Time from sending a request upstream to its response head."""
        histogram = self.upstream.get(route)
        if histogram is None:
            histogram = self.upstream[route] = Histogram()
        histogram.observe(seconds)
