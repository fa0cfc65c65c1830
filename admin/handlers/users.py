"""``/api/v1/users`` (admin only): rules in :class:`gateway.service.users.UserService`."""

from __future__ import annotations

from aiohttp import web

from keygate.admin import params
from keygate.admin.body import read_json
from keygate.admin.context import actor, services
from keygate.admin.responses import json_response, no_content


async def list_users(request: web.Request) -> web.Response:
    query = request.query
    items, cursor = await services(request).users.list(
        actor(request), limit=params.limit(query), cursor=params.text(query, "cursor")
    )
    return json_response({"items": [u.as_json() for u in items], "next_cursor": cursor})


async def create_user(request: web.Request) -> web.Response:
    body = await read_json(request)
    user = await services(request).users.create(actor(request), body)
    return json_response(user.as_json(), status=201)


async def get_user(request: web.Request) -> web.Response:
    user = await services(request).users.get(actor(request), request.match_info["username"])
    return json_response(user.as_json())


async def update_user(request: web.Request) -> web.Response:
    body = await read_json(request)
    username = request.match_info["username"]
    user = await services(request).users.update(actor(request), username, body)
    return json_response(user.as_json())


async def delete_user(request: web.Request) -> web.Response:
    # The service revokes the user's keys in the same transaction
    # (docs/reference.md#users).
    await services(request).users.delete(actor(request), request.match_info["username"])
    return no_content()
