"""The gateway's shared state: what the proxy steps read on every request.

Each resource the app opens has its own ``cleanup_ctx`` and its own typed app
key (see :mod:`keygate.gateway.http.app`); :class:`Gateway` gathers what the
hot path needs, complete when it is built.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver

from keygate.config.settings import Route, Settings
from keygate.gateway.auth.cache import KeyCache
from keygate.gateway.auth.changes import ChangeFeed
from keygate.gateway.auth.credentials import Sources
from keygate.gateway.auth.imported import ImportedDigests
from keygate.gateway.auth.keyids import KeyIdSet
from keygate.gateway.auth.policy import Policy, RouteTable
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.auth.verify import Verifier
from keygate.gateway.http.clientip import trusted_networks
from keygate.gateway.limits.limiter import Limiter
from keygate.gateway.limits.notices import TrafficNotice, no_notice
from keygate.gateway.limits.rules import Allowlist
from keygate.gateway.limits.usage import Usage
from keygate.gateway.metrics.counts import Counts
from keygate.gateway.metrics.exposition import Publisher
from keygate.gateway.request.headers import RequestIds
from keygate.gateway.service import Services
from keygate.gateway.store.base import Store
from keygate.gateway.upstream.gate import RouteGate, route_gates
from keygate.gateway.upstream.pool import UpstreamPool
from keygate.gateway.webhooks.deliverer import Deliverer


class KeyMemory:
    """What this process holds of the store: verified keys, every key id, the
    digests of imported keys, the compiled group rules. Change notices (this
    process's own writes, and the change feed for everyone else's) keep it
    current."""

    def __init__(self, store: Store, cache: KeyCache, key_ids: KeyIdSet, policy: Policy) -> None:
        self.store = store
        self.cache = cache
        self.key_ids = key_ids
        self.policy = policy
        # Change notices applied, by where they came from: this process's own
        # writes, or the change feed (keygate_invalidations_total).
        self.invalidations = {"local": 0, "feed": 0}
        self.imported = ImportedDigests()

    async def load_imported(self, after_seq: int = 0, upto_seq: int | None = None) -> None:
        """Read imported keys' digests (all, or one notice's seq span), a chunk
        at a time so a million never sit in one list. Their ids are not read:
        an imported token carries none (``Store.key_ids``)."""
        while True:
            page = await self.store.imported_keys(after_seq, upto_seq, IMPORT_CHUNK)
            self.imported.update(page.digests)
            if len(page.digests) < IMPORT_CHUNK:
                return
            after_seq = page.last_seq

    @classmethod
    async def load(cls, store: Store, cache: KeyCache) -> KeyMemory:
        """Memory with the store's rules; key ids are read once the feed runs."""
        return cls(store, cache, KeyIdSet(), await _policy(store))

    async def apply(self, kind: str, ref: str, source: str = "local") -> None:
        """Evict what a change affects; a group change also recompiles the rules."""
        self.invalidations[source] += 1
        self.cache.apply(kind, ref)
        if kind == "key-created":
            self.key_ids.add(ref)
        elif kind == "keys-imported":
            first, _, last = ref.partition(":")
            await self.load_imported(int(first) - 1, int(last))
        if kind == "group":
            self.policy = await _policy(self.store)

    async def from_feed(self, kind: str, ref: str) -> None:
        """:meth:`apply` for a notice the change feed brought."""
        await self.apply(kind, ref, "feed")


# Imported keys read per query at start-up and per announced batch.
IMPORT_CHUNK = 100_000


async def _policy(store: Store) -> Policy:
    groups = await store.list_groups()
    return Policy({g.name: list(g.rules) for g in groups})


class RouteNames(Collection[str]):
    """The names of the configured routes, as group rules may refer to them;
    current across reloads (the services hold this one object)."""

    __slots__ = ("_names",)

    def __init__(self, routes: Iterable[Route]) -> None:
        self._names = frozenset(r.name for r in routes)

    def replace(self, routes: Iterable[Route]) -> None:
        self._names = frozenset(r.name for r in routes)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(eq=False, slots=True)
class Gateway:
    settings: Settings
    store: Store
    memory: KeyMemory
    usage: UsageRecorder
    verifier: Verifier
    routes: RouteTable
    sources: Sources
    services: Services
    gates: dict[str, RouteGate]
    route_names: RouteNames

    limiter: Limiter
    # server.trusted_proxies, compiled; None: the TCP peer is always the client.
    trusted: Allowlist | None = None
    # Refusals for a key's address, rate limits or quota (gateway/limits/notices.py).
    notice: TrafficNotice = no_notice
    # This process's metrics (gateway/metrics/); None when [metrics] is off.
    metrics: Counts | None = None

    def reconfigure(self, settings: Settings) -> None:
        """New requests take ``settings``' routes, limits and key sources
        (docs/reference.md#reloading-the-configuration).

        A request resolves its route and gate once (:func:`pipeline.resolve`,
        in one step with no await): one in flight finishes on the route, the
        upstream and the limits it started with. Raises ValueError, before
        anything changes, for routes that cannot be served together.
        """
        routes = RouteTable(settings.routes)
        sources = Sources.parse(settings.auth.sources)
        gates = route_gates(settings.routes, self.gates)
        self.settings = settings
        self.routes = routes
        self.sources = sources
        self.gates = gates
        self.trusted = trusted_networks(settings.server.trusted_proxies)
        self.route_names.replace(settings.routes)

    @property
    def cache(self) -> KeyCache:
        return self.memory.cache

    @property
    def policy(self) -> Policy:
        return self.memory.policy

    async def apply_change(self, kind: str, ref: str) -> None:
        await self.memory.apply(kind, ref)


# One typed key per resource, each opened and closed by its own cleanup_ctx.
store_key = web.AppKey("store", Store)
usage_key = web.AppKey("usage", UsageRecorder)
changes_key = web.AppKey("changes", ChangeFeed)
limiter_key = web.AppKey("limiter", Limiter)
gateway_key = web.AppKey("gateway", Gateway)
pool_key = web.AppKey("pool", UpstreamPool)
session_key = web.AppKey("session", aiohttp.ClientSession)
request_ids_key = web.AppKey("request_ids", RequestIds)
deliverer_key = web.AppKey("deliverer", Deliverer)
# Set before the app starts (tests): what webhook receivers' names resolve
# with, at write and at connect time; unset, the system's resolver.
webhook_resolver_key = web.AppKey("webhook_resolver", AbstractResolver)
# With several workers: where this one publishes its metrics (absent otherwise).
metrics_publisher_key = web.AppKey("metrics_publisher", Publisher)
# Per-request facts for the access log and the response (typed request storage).
request_id_key = web.RequestKey("request_id", str)
key_id_key = web.RequestKey("key_id", str)
route_key = web.RequestKey("route", str)
# The rate-limit header fields of a counted request (added when its answer is prepared).
ratelimit_key = web.RequestKey("ratelimit_usage", Usage)
# For the metrics: keygate's refusal code, and forward-auth's mode.
error_code_key = web.RequestKey("error_code", str)
mode_key = web.RequestKey("mode", str)
