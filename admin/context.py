"""What a handler reads from its request: the gateway state and the authenticated actor."""

from __future__ import annotations

from aiohttp import web

from keygate.gateway.service import Actor, Services
from keygate.gateway.state import Gateway, gateway_key

# Set by the auth middleware on every non-public request (admin.auth).
actor_key = web.RequestKey("keygate_admin_actor", Actor)


def gateway(request: web.Request) -> Gateway:
    # config_dict reaches the parent app: the same store, cache and services as the proxy.
    return request.config_dict[gateway_key]


def services(request: web.Request) -> Services:
    svc = gateway(request).services
    assert svc is not None, "services are built in the gateway's cleanup_ctx"
    return svc


def actor(request: web.Request) -> Actor:
    return request[actor_key]
