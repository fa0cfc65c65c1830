"""Group rules (docs/reference.md#groups): admin only; built-in groups are read-only."""

from __future__ import annotations

from typing import Any

from msgspec import UNSET

from keygate.gateway.auth.policy import validate_rules
from keygate.gateway.errors import Forbidden, NotFound
from keygate.gateway.service import bodies, conflicts
from keygate.gateway.service import validation as v
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.store.records import BUILTIN_GROUPS, GroupRecord, utcnow

# Aliases: inside the class, ``list`` names the method.
Rules = list[dict[str, Any]]


class GroupService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def get(self, actor: Actor, name: str) -> GroupRecord:
        actor.require_admin()
        group = await self.ctx.store.get_group(name)
        if group is None:
            raise NotFound("No such group.")
        return group

    async def list(self, actor: Actor) -> list[GroupRecord]:
        actor.require_admin()
        return await self.ctx.store.list_groups()

    async def create(self, actor: Actor, body: Any) -> GroupRecord:
        actor.require_admin()
        req, errors = bodies.decode(bodies.GroupCreate, body)
        rules = self._rules(req.rules, errors) if req.rules is not UNSET else []
        errors.raise_if_any()
        assert req.name is not UNSET and req.description is not UNSET
        now = utcnow()
        group = GroupRecord(req.name, req.description, tuple(rules), False, now, now)
        with conflicts.store_refusals():
            created = await self.ctx.store.create_group(
                group,
                audit=actor.audit("group.create", "group", group.name, {"rules": rules}),
            )
        await self.ctx.notify("group", created.name)
        return created

    async def update(self, actor: Actor, name: str, body: Any) -> GroupRecord:
        group = await self.get(actor, name)
        self._writable(group)
        req, errors = bodies.decode(bodies.GroupPatch, body)
        fields: dict[str, Any] = {}
        if req.description is not UNSET:
            fields["description"] = req.description
        if req.rules is not UNSET:
            fields["rules"] = self._rules(req.rules, errors)
        errors.raise_if_any()
        if not fields:
            return group
        updated = await self.ctx.store.update_group(
            name, fields, audit=actor.audit("group.update", "group", name, fields)
        )
        await self.ctx.notify("group", name)
        return updated

    async def delete(self, actor: Actor, name: str, *, force: bool = False) -> None:
        group = await self.get(actor, name)
        self._writable(group)
        with conflicts.store_refusals():
            await self.ctx.store.delete_group(
                name,
                force=force,
                audit=actor.audit("group.delete", "group", name, {"force": force}),
            )
        # The store also queued user/key notices; locally evicting the group's
        # keys and reloading the policy covers them.
        await self.ctx.notify("group", name)

    def _rules(self, raw: Any, errors: v.Errors) -> Rules:
        rules, problems = validate_rules(raw, self.ctx.route_names)
        errors.update(problems)
        return rules

    @staticmethod
    def _writable(group: GroupRecord) -> None:
        if group.builtin or group.name in BUILTIN_GROUPS:
            raise Forbidden("Built-in groups cannot be changed or deleted.")
