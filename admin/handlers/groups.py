"""``/api/v1/groups`` (admin only): rules in :class:`gateway.service.groups.GroupService`."""

from __future__ import annotations

from aiohttp import web

from keygate.admin import params
from keygate.admin.body import read_json
from keygate.admin.context import actor, services
from keygate.admin.responses import json_response, no_content


async def list_groups(request: web.Request) -> web.Response:
    groups = await services(request).groups.list(actor(request))
    # Few enough to fit one page; the list keeps the paginated shape of the others.
    return json_response({"items": [g.as_json() for g in groups], "next_cursor": None})


async def create_group(request: web.Request) -> web.Response:
    body = await read_json(request)
    group = await services(request).groups.create(actor(request), body)
    return json_response(group.as_json(), status=201)


async def get_group(request: web.Request) -> web.Response:
    group = await services(request).groups.get(actor(request), request.match_info["name"])
    return json_response(group.as_json())


async def update_group(request: web.Request) -> web.Response:
    body = await read_json(request)
    group = await services(request).groups.update(actor(request), request.match_info["name"], body)
    return json_response(group.as_json())


async def delete_group(request: web.Request) -> web.Response:
    force = params.flag(request.query, "force")
    await services(request).groups.delete(actor(request), request.match_info["name"], force=force)
    return no_content()
