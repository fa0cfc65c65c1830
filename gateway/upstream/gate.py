"""Per-route runtime state: where its upstream is and the bound on its exchanges."""

from __future__ import annotations

import aiohttp
import yarl

from keygate.config.settings import Route
from keygate.gateway.errors import UpstreamBusy
from keygate.gateway.upstream.exchange import Origin


class RouteGate:
    """The route's upstream and its concurrent exchanges (``max_connections``).

    A plain counter suffices: check and increment happen without an await in
    between, on one event loop. When full, :class:`UpstreamBusy` is raised at
    once instead of queueing, so a saturated upstream costs nothing but a 503.
    A WebSocket holds its slot for as long as it is open.
    """

    __slots__ = ("_in_flight", "base", "limit", "origin", "route", "timeout")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.limit = route.max_connections
        # One object per route, not per request; covers connect, headers, body.
        self.timeout = aiohttp.ClientTimeout(total=route.timeout)
        self.base = yarl.URL(route.upstream)
        # None unless plain http: then the pooled client speaks to it.
        self.origin = Origin.of(self.base)
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

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
        if self._in_flight >= self.limit:
            raise UpstreamBusy()
        self._in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self._in_flight -= 1
