"""The gateway's shared state, one object under one typed app key."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from keygate.config.settings import Settings
from keygate.gateway.auth.cache import KeyCache
from keygate.gateway.auth.credentials import Sources
from keygate.gateway.auth.policy import Policy, RouteTable
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.auth.verify import Verifier
from keygate.gateway.service import Services
from keygate.gateway.store.base import Store
from keygate.gateway.upstream.client import RouteGate
from yarl import URL

log = logging.getLogger("keygate")


@dataclass(eq=False)
class Gateway:
    settings: Settings
    store: Store
    cache: KeyCache
    usage: UsageRecorder
    verifier: Verifier
    routes: RouteTable
    sources: Sources
    services: Services | None = None
    policy: Policy = field(default_factory=lambda: Policy({}))
    session: aiohttp.ClientSession | None = None
    gates: dict[str, RouteGate] = field(default_factory=dict)
    upstream_base: dict[str, URL] = field(default_factory=dict)

    async def reload_policy(self) -> None:
        groups = await self.store.list_groups()
        self.policy = Policy({g.name: list(g.rules) for g in groups})

    async def apply_change(self, kind: str, ref: str) -> None:
        """Evict what a change affects; a group change also recompiles the policy."""
        self.cache.apply(kind, ref)
        if kind == "key-created" and self.verifier.key_ids is not None:
            self.verifier.key_ids.add(ref)
        if kind == "group":
            await self.reload_policy()


gateway_key = web.AppKey("gateway", Gateway)
# Per-request facts for the access log and the response (typed request storage).
request_id_key = web.RequestKey("request_id", str)
key_id_key = web.RequestKey("key_id", str)
route_key = web.RequestKey("route", str)
