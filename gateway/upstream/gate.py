"""Per-route runtime state: where its upstream is and the bound on its exchanges."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import aiohttp
import yarl

from keygate.config.settings import Route
from keygate.gateway.errors import UpstreamBusy
from keygate.gateway.upstream.exchange import Origin


class Slots:
    """A route's exchanges in flight, counted across reloads of its settings."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = 0


class RouteGate:
    """The route's upstream and its concurrent exchanges (``max_connections``).

    A plain counter suffices: check and increment happen without an await in
    between, on one event loop. When full, :class:`UpstreamBusy` is raised at
    once instead of queueing, so a saturated upstream costs nothing but a 503.
    A WebSocket holds its slot for as long as it is open.

    A reload makes a new gate per route (requests in flight keep the one they
    resolved, and its upstream); a route of the same name shares ``slots``
    with its predecessor, so its limit counts old and new requests alike.
    """

    __slots__ = ("base", "limit", "origin", "route", "slots", "timeout")

    def __init__(self, route: Route, slots: Slots | None = None) -> None:
        self.route = route
        self.limit = route.max_connections
        # One object per route, not per request; covers connect, headers, body.
        self.timeout = aiohttp.ClientTimeout(total=route.timeout)
        self.base = yarl.URL(route.upstream)
        # None unless plain http: then the pooled client speaks to it.
        self.origin = Origin.of(self.base)
        self.slots = Slots() if slots is None else slots

    @property
    def in_flight(self) -> int:
        return self.slots.used

    def url_of(self, target: str) -> yarl.URL:
        """The absolute URL of request ``target`` (encoded path and query) upstream."""
        base = self.base
        path, _, query = target.partition("?")
        # Built, never joined: a path like "//host/x" must not name another host.
        return yarl.URL.build(
            scheme=base.scheme,
            host=base.raw_host or "",
            port=base.explicit_port,
            path=path,
            query_string=query,
            encoded=True,
        )

    def __enter__(self) -> None:
        slots = self.slots
        if slots.used >= self.limit:
            raise UpstreamBusy()
        slots.used += 1

    def __exit__(self, *exc_info: object) -> None:
        self.slots.used -= 1


def route_gates(routes: Iterable[Route], before: Mapping[str, RouteGate]) -> dict[str, RouteGate]:
    """A gate per route; one named as a gate ``before`` shares its slots."""
    gates: dict[str, RouteGate] = {}
    for route in routes:
        old = before.get(route.name)
        gates[route.name] = RouteGate(route, old.slots if old is not None else None)
    return gates
