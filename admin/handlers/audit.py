"""``GET /api/v1/audit`` (admin only): every admin change, newest first."""

from __future__ import annotations

from aiohttp import web

from keygate.admin import params
from keygate.admin.context import actor, services
from keygate.admin.responses import json_response


async def list_audit(request: web.Request) -> web.Response:
    items, cursor = await services(request).audit.list(
        actor(request),
        limit=params.limit(request.query),
        cursor=params.text(request.query, "cursor"),
    )
    return json_response({"items": [r.as_json() for r in items], "next_cursor": cursor})
