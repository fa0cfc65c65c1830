"""Reading the audit trail (admin only); writing happens inside every change."""

from __future__ import annotations

from keygate.gateway.errors import Invalid
from keygate.gateway.service import cursor as cursors
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.store.records import AuditRecord

MAX_LIMIT = 500


class AuditService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def list(
        self, actor: Actor, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[AuditRecord], str | None]:
        actor.require_admin()
        if not 1 <= limit <= MAX_LIMIT:
            raise Invalid({"limit": f"must be between 1 and {MAX_LIMIT}"})
        before = cursors.decode_int("a", cursor) if cursor else None
        page = await self.ctx.store.list_audit(limit, before)
        return page.items, cursors.encode("a", page.next_cursor)
