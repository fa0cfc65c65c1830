"""``/api/v1/keys``: every rule lives in :class:`gateway.service.keys.KeyService`."""

from __future__ import annotations

from aiohttp import web

from keygate.admin import params
from keygate.admin.body import read_json, read_optional_json
from keygate.admin.context import actor, gateway, services
from keygate.admin.responses import json_response, no_content
from keygate.gateway.service import IssuedKey
from keygate.gateway.store.records import KeyRecord


def key_json(request: web.Request, key: KeyRecord) -> dict[str, object]:
    """The key record, its ``avatar_url`` under this gateway's admin prefix."""
    return key.as_json(admin_prefix=gateway(request).settings.server.admin_prefix)


def issued(request: web.Request, result: IssuedKey) -> dict[str, object]:
    # The only responses that carry a token: it is shown once (docs/reference.md#token-format).
    out: dict[str, object] = {"key": key_json(request, result.key), "token": result.token}
    if result.webhook_secret is not None:  # shown once too (docs/webhooks.md#secrets)
        out["webhook_secret"] = result.webhook_secret
    return out


async def list_keys(request: web.Request) -> web.Response:
    query = request.query
    items, cursor = await services(request).keys.list(
        actor(request),
        search=params.search(query),
        status=params.text(query, "status"),
        owner=params.text(query, "owner"),
        group=params.text(query, "group"),
        limit=params.limit(query),
        cursor=params.text(query, "cursor"),
    )
    return json_response({"items": [key_json(request, k) for k in items], "next_cursor": cursor})


async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = await services(request).keys.create(actor(request), body)
    return json_response(issued(request, result), status=201)


# An import's records are larger than other bodies: 10,000 records of a few
# hundred bytes each (docs/admin-api.md#import-keys).
MAX_IMPORT_BYTES = 8 * 1024 * 1024


async def import_keys(request: web.Request) -> web.Response:
    # Refused before up to 8 MiB are read and decoded: only an admin may import.
    who = actor(request)
    who.require_admin()
    body = await read_json(request, MAX_IMPORT_BYTES)
    report = await services(request).imports.request(who, body)
    return json_response(report.as_json())


async def get_key(request: web.Request) -> web.Response:
    key = await services(request).keys.get(actor(request), request.match_info["id"])
    return json_response(key_json(request, key))


async def update_key(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = await services(request).keys.change(actor(request), request.match_info["id"], body)
    out = key_json(request, result.key)
    if result.webhook_secret is not None:  # the first webhook_url: its secret, shown once
        out["webhook_secret"] = result.webhook_secret
    return json_response(out)


async def revoke_key(request: web.Request) -> web.Response:
    key = await services(request).keys.revoke(actor(request), request.match_info["id"])
    return json_response(key_json(request, key))


async def roll_key(request: web.Request) -> web.Response:
    body = await read_optional_json(request)  # {"grace_seconds": n}; none at all is {}
    result = await services(request).keys.roll(actor(request), request.match_info["id"], body)
    return json_response(issued(request, result))


async def delete_key(request: web.Request) -> web.Response:
    await services(request).keys.delete(actor(request), request.match_info["id"])
    return no_content()
