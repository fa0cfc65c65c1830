"""The first admin: created once, on an empty store, by ``init`` or ``serve``."""

from __future__ import annotations

from ..errors import Conflict
from ..store.records import ADMIN_GROUP
from .actor import Actor
from .context import ServiceContext
from .keys import IssuedKey, KeyService
from .users import UserService


async def create_first_admin(ctx: ServiceContext, username: str = "admin") -> IssuedKey:
    """User ``admin`` (role admin) with key ``admin`` in group ``admin``.

    Conflict ``admin_exists`` when any active admin exists already.
    """
    if await ctx.store.count_admins() > 0:
        raise Conflict("An admin user exists already.", code="admin_exists")
    cli = Actor.cli()
    user = await ctx.store.get_user(username)
    if user is None:
        user = await UserService(ctx).create_unchecked(cli, username, "admin", [])
    actor = Actor(user.id, user.username, None, (ADMIN_GROUP,), "local")
    return await KeyService(ctx).create(actor, {"name": "admin", "groups": [ADMIN_GROUP]})
