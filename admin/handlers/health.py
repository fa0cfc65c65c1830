"""Public liveness and readiness probes.

``/health`` answers 200 while the process serves. ``/ready`` says, per
dependency, what is wrong (docs/reference.md#probes):

- ``checks.store.status`` ``ok``; ``unavailable`` (no answer: 503, so a load
  balancer sends traffic elsewhere); ``not_writable`` (the disk is full or
  read-only: 200 with ``"status": "degraded"``, because every key still
  verifies and every request is still proxied — only admin changes fail, with
  507 — and taking the gateway out of rotation would turn that into an
  outage of all traffic).

- ``checks.redis.status`` (only with the redis rate-limit backend) ``ok`` or
  ``unavailable``: 200 with ``"status": "degraded"``, because Redis is shared
  by every node (taking one out of rotation helps nothing) and keys without
  limits are served either way; with ``fail_open`` so are the others.

Messages are fixed wording: the probe is public.
"""

from __future__ import annotations

from aiohttp import web

from keygate.admin.context import gateway
from keygate.admin.responses import json_response
from keygate.gateway.errors import StoreUnavailable


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    store = gateway(request).store
    try:
        await store.ping()
    except StoreUnavailable as exc:
        error = {"code": exc.code, "message": exc.message}
        return json_response(
            {
                "status": "unavailable",
                "checks": {"store": {"status": "unavailable", **error}},
                "error": error,
            },
            status=503,
        )
    checks: dict[str, dict[str, str]] = {"store": {"status": "ok"}}
    degraded = False
    problem = await store.write_problem()
    if problem is not None:
        checks["store"] = {
            "status": "not_writable",
            "code": problem.code,
            "message": problem.message,
        }
        degraded = True
    limiter = gateway(request).limiter
    if limiter.dependency is not None:
        if await limiter.reachable():
            checks[limiter.dependency] = {"status": "ok"}
        else:
            checks[limiter.dependency] = {
                "status": "unavailable",
                "code": "ratelimit_unavailable",
                "message": "The rate-limit backend does not answer.",
            }
            degraded = True
    return json_response({"status": "degraded" if degraded else "ok", "checks": checks})
