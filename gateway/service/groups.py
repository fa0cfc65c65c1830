"""Group rules (docs/reference.md#groups): admin only; built-in groups are read-only."""

from __future__ import annotations

from typing import Any

from keygate.gateway.auth.policy import validate_rules
from keygate.gateway.errors import Forbidden, NotFound
from keygate.gateway.service import conflicts
from keygate.gateway.service import validation as v
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.store.records import BUILTIN_GROUPS, GroupRecord, utcnow

CREATE_FIELDS = frozenset({"name", "description", "rules"})
PATCH_FIELDS = frozenset({"description", "rules"})


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
        body = v.require_object(body)
        errors = v.Errors()
        v.reject_unknown(body, CREATE_FIELDS, errors)
        name = body.get("name")
        if "name" not in body:
            errors["name"] = "required"
        elif not isinstance(name, str) or not v.GROUP_NAME_RE.match(name):
            errors["name"] = "must match [a-z0-9][a-z0-9_-]{0,63}"
        description = v.text(body.get("description", ""), "description", errors, max_len=1000)
        rules = self._rules(body.get("rules", []), errors)
        errors.raise_if_any()
        now = utcnow()
        group = GroupRecord(str(name), description or "", tuple(rules), False, now, now)
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
        body = v.require_object(body)
        errors = v.Errors()
        v.reject_unknown(body, PATCH_FIELDS, errors)
        fields: dict[str, Any] = {}
        if "description" in body:
            fields["description"] = v.text(body["description"], "description", errors, max_len=1000)
        if "rules" in body:
            fields["rules"] = self._rules(body["rules"], errors)
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
