"""``GET /api/v1/audit`` (admin only): every admin change, newest first."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import Invalid
from gateway.service.keys import MAX_LIMIT, decode_cursor

from .. import params
from ..context import actor, gateway
from ..responses import json_response


async def list_audit(request: web.Request) -> web.Response:
    # The service layer has no audit reader: reading the trail is one store call
    # behind the same admin check the services use.
    actor(request).require_admin()
    limit = params.limit(request.query)
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid({"limit": f"must be between 1 and {MAX_LIMIT}"})
    cursor = params.text(request.query, "cursor")
    before = decode_cursor(cursor, tag=params.AUDIT_CURSOR_TAG) if cursor else None
    page = await gateway(request).store.list_audit(limit, before)
    items = [record.as_json() for record in page.items]
    return json_response({"items": items, "next_cursor": params.audit_cursor(page.next_cursor)})
