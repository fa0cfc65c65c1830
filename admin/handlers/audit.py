"""``GET /api/v1/audit`` (admin only): every admin change, newest first."""

from __future__ import annotations

from aiohttp import web

from keygate.admin import params
from keygate.admin.context import actor, services
from keygate.admin.responses import json_response


async def list_audit(request: web.Request) -> web.Response:
    query = request.query
    items, cursor = await services(request).audit.list(
        actor(request),
        limit=params.limit(query),
        cursor=params.text(query, "cursor"),
        target_type=params.text(query, "target_type"),
        target=params.text(query, "target"),
        actor_name=params.text(query, "actor"),
    )
    return json_response({"items": [r.as_json() for r in items], "next_cursor": cursor})
