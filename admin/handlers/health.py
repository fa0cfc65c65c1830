"""Public liveness and readiness probes."""

from __future__ import annotations

from aiohttp import web

from keygate.admin.context import gateway
from keygate.admin.responses import json_response
from keygate.gateway.errors import StoreUnavailable


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        await gateway(request).store.ping()
    except StoreUnavailable as exc:
        error = {"code": exc.code, "message": exc.message}
        return json_response({"status": "unavailable", "error": error}, status=503)
    return json_response({"status": "ok"})
