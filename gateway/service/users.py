"""User rules (docs/reference.md#users): admin only; the last active admin cannot
be removed."""

from __future__ import annotations

import secrets
import typing
from typing import Any

from msgspec import UNSET

from keygate.gateway.errors import NotFound
from keygate.gateway.service import bodies, conflicts
from keygate.gateway.service import cursor as cursors
from keygate.gateway.service import validation as v
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.store.records import ADMIN_GROUP, UserRecord, utcnow

ROLES: tuple[str, ...] = typing.get_args(bodies.Role)


def new_user_id() -> str:
    return "u_" + secrets.token_hex(8)


# Aliases: inside the class, ``list`` names the method.
Names = list[str]


class UserService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def get(self, actor: Actor, username: str) -> UserRecord:
        actor.require_admin()
        user = await self.ctx.store.get_user(username)
        if user is None:
            raise NotFound("No such user.")
        return user

    async def list(
        self, actor: Actor, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[UserRecord], str | None]:
        actor.require_admin()
        if not 1 <= limit <= 500:
            raise v.Invalid({"limit": "must be between 1 and 500"})
        after = cursors.decode("u", cursor) if cursor else None
        page = await self.ctx.store.list_users(limit, after)
        return page.items, cursors.encode("u", page.next_cursor)

    async def create(self, actor: Actor, body: Any) -> UserRecord:
        actor.require_admin()
        req, errors = bodies.decode(bodies.UserCreate, body)
        groups = bodies.unique(req.groups) if req.groups is not UNSET else []
        if req.role is not UNSET:
            await self._check_groups(req.role, groups, errors)
        errors.raise_if_any()
        assert req.username is not UNSET and req.role is not UNSET
        return await self.create_unchecked(actor, req.username, req.role, groups)

    async def create_unchecked(
        self, actor: Actor | None, username: str, role: str, groups: Names
    ) -> UserRecord:
        """Insert a validated user (also used by ``init`` before any admin exists)."""
        now = utcnow()
        user = UserRecord(new_user_id(), username, role, tuple(groups), "active", now, now)
        audit = None
        if actor is not None:
            audit = actor.audit(
                "user.create", "user", username, {"role": role, "groups": groups}
            )
        with conflicts.store_refusals():
            created = await self.ctx.store.create_user(user, audit=audit)
        await self.ctx.notify("user", created.id)
        return created

    async def update(self, actor: Actor, username: str, body: Any) -> UserRecord:
        user = await self.get(actor, username)
        req, errors = bodies.decode(bodies.UserPatch, body)
        fields: dict[str, Any] = {}
        for name in ("role", "groups", "status"):
            if (value := getattr(req, name)) is not UNSET:
                fields[name] = value
        if "groups" in fields:
            fields["groups"] = bodies.unique(fields["groups"])
        if not errors:
            role = fields.get("role", user.role)
            groups = fields.get("groups", list(user.groups))
            await self._check_groups(role, groups, errors)
        errors.raise_if_any()
        if not fields:
            return user
        losing_admin = user.role == "admin" and user.status == "active" and (
            fields.get("role", "admin") != "admin" or fields.get("status", "active") != "active"
        )
        if losing_admin:
            await self._keep_an_admin(user)
        updated = await self.ctx.store.update_user(
            username, fields, audit=actor.audit("user.update", "user", username, fields)
        )
        await self.ctx.notify("user", updated.id)
        return updated

    async def delete(self, actor: Actor, username: str) -> Names:
        user = await self.get(actor, username)
        if user.role == "admin" and user.status == "active":
            await self._keep_an_admin(user)
        revoked = await self.ctx.store.delete_user(
            username, audit=actor.audit("user.delete", "user", username)
        )
        await self.ctx.notify("user", user.id)
        for key_id in revoked:
            await self.ctx.notify("key", key_id)
        return revoked

    async def _check_groups(self, role: str, groups: Names, errors: v.Errors) -> None:
        if role == "member" and ADMIN_GROUP in groups:
            errors["groups"] = "the admin group is never a member's; make the user an admin"
            return
        known = {g.name for g in await self.ctx.store.list_groups()}
        unknown = [g for g in groups if g not in known]
        if unknown:
            errors["groups"] = f"unknown group {unknown[0]!r}"

    async def _keep_an_admin(self, user: UserRecord) -> None:  # user: an active admin
        # Demoting, disabling or deleting the last active admin would lock
        # everyone out of the admin API.
        if await self.ctx.store.count_admins() <= 1:
            raise conflicts.last_admin()
