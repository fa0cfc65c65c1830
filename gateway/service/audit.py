"""Reading the audit trail (admin only); writing happens inside every change."""

from __future__ import annotations

from keygate.gateway.service import cursor as cursors
from keygate.gateway.service import validation as v
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.store.records import AuditQuery, AuditRecord

MAX_LIMIT = 500
TARGET_TYPES = ("key", "user", "group")


class AuditService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def list(
        self,
        actor: Actor,
        *,
        limit: int = 50,
        cursor: str | None = None,
        target_type: str | None = None,
        target: str | None = None,
        actor_name: str | None = None,
    ) -> tuple[list[AuditRecord], str | None]:
        """``target_type``/``target`` (a key id, username or group name) and
        ``actor_name`` (a username, or ``cli:<os user>``) narrow the trail."""
        actor.require_admin()
        errors = v.Errors()
        if not 1 <= limit <= MAX_LIMIT:
            errors["limit"] = f"must be between 1 and {MAX_LIMIT}"
        if target_type is not None:
            v.choice(target_type, "target_type", TARGET_TYPES, errors)
        v.query_text(target, "target", errors)
        v.query_text(actor_name, "actor", errors)
        errors.raise_if_any()
        before = cursors.decode_int("a", cursor) if cursor else None
        query = AuditQuery(target_type=target_type, target_id=target, actor=actor_name)
        page = await self.ctx.store.list_audit(limit, before, query)
        return page.items, cursors.encode("a", page.next_cursor)
