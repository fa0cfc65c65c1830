"""``GET /api/v1/me``: the calling user and the calling key."""

from __future__ import annotations

from aiohttp import web

from keygate.admin.context import actor, gateway, services
from keygate.admin.handlers.keys import key_json
from keygate.admin.responses import json_response
from keygate.gateway.errors import Unauthorized


async def me(request: web.Request) -> web.Response:
    who = actor(request)
    assert who.user_id is not None and who.key_id is not None  # set from a verified key
    user = await gateway(request).store.get_user_by_id(who.user_id)
    if user is None:
        # Deleted between verification and now: the key no longer authenticates.
        raise Unauthorized
    key = await services(request).keys.get(who, who.key_id)
    limits = {"max_keys_per_user": gateway(request).settings.auth.max_keys_per_user}
    body = {"user": user.as_json(), "key": key_json(request, key), "limits": limits}
    return json_response(body)
