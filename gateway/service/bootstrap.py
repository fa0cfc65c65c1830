"""The first admin: created once, on an empty store, by ``init`` or ``serve``."""

from __future__ import annotations

from keygate.gateway.service import conflicts
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.service.keys import IssuedKey, KeyService
from keygate.gateway.service.users import UserService
from keygate.gateway.store.records import ADMIN_GROUP


async def create_first_admin(ctx: ServiceContext, username: str = "admin") -> IssuedKey:
    """User ``admin`` (role admin) with key ``admin`` in group ``admin``.

    Conflict ``admin_exists`` when any active admin exists already.
    """
    if await ctx.store.count_admins() > 0:
        raise conflicts.admin_exists()
    cli = Actor.cli()
    user = await ctx.store.get_user(username)
    if user is None:
        user = await UserService(ctx).create_unchecked(cli, username, "admin", [])
    actor = Actor(user.id, user.username, None, (ADMIN_GROUP,), "local")
    return await KeyService(ctx).create(actor, {"name": "admin", "groups": [ADMIN_GROUP]})
