"""``/api/v1/keys/{id}/webhook-*``: every rule lives in
:class:`gateway.service.webhooks.WebhookService` (docs/admin-api.md#webhooks)."""

from __future__ import annotations

from aiohttp import web

from keygate.admin import params
from keygate.admin.body import read_optional_json
from keygate.admin.context import actor, services
from keygate.admin.responses import json_response


async def list_deliveries(request: web.Request) -> web.Response:
    query = request.query
    items, cursor = await services(request).webhooks.deliveries(
        actor(request),
        request.match_info["id"],
        limit=params.limit(query),
        cursor=params.text(query, "cursor"),
    )
    return json_response({"items": [d.as_json() for d in items], "next_cursor": cursor})


async def redeliver(request: web.Request) -> web.Response:
    record = await services(request).webhooks.redeliver(
        actor(request), request.match_info["id"], request.match_info["delivery_id"]
    )
    return json_response(record.as_json(), status=202)


async def test(request: web.Request) -> web.Response:
    body = await read_optional_json(request)  # none at all is {}; no fields
    event_id = await services(request).webhooks.test(
        actor(request), request.match_info["id"], body
    )
    return json_response({"event_id": event_id}, status=202)


async def rotate_secret(request: web.Request) -> web.Response:
    # The only response besides the one that first sets webhook_url that
    # carries a webhook secret: shown once (docs/webhooks.md#secrets).
    body = await read_optional_json(request)  # none at all is {}; no fields
    secret = await services(request).webhooks.rotate_secret(
        actor(request), request.match_info["id"], body
    )
    return json_response({"webhook_secret": secret})
