"""Webhook rules (docs/admin-api.md#webhooks): deliveries, redelivery, test pings,
secret rotation; and the check every webhook_url passes before it is stored."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from keygate.gateway.service import bodies, conflicts
from keygate.gateway.service import cursor as cursors
from keygate.gateway.service import validation as v
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.service.keys import KeyService
from keygate.gateway.store.hookrecords import DeliveryRecord
from keygate.gateway.store.records import utcnow
from keygate.gateway.webhooks import events, signing

MAX_LIMIT = 500  # as every list (admin/openapi.py)
# A rotated secret keeps signing beside the new one this long, so receivers
# can switch without missing a delivery.
ROTATION_OVERLAP = timedelta(hours=24)
# Operators' endpoints are an admin's business: an owner sees deliveries to
# the key's own URL only.
ADMIN_TARGETS = ("key", "endpoint")
OWNER_TARGETS = ("key",)
# What a caller without a body (the CLI) sends.
EMPTY: Mapping[str, Any] = {}


class WebhookService:
    def __init__(self, ctx: ServiceContext, keys: KeyService) -> None:
        self.ctx = ctx
        self.keys = keys

    async def deliveries(
        self, actor: Actor, key_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[DeliveryRecord], str | None]:
        await self.keys.get(actor, key_id)
        errors = v.Errors()
        if not 1 <= limit <= MAX_LIMIT:
            errors["limit"] = f"must be between 1 and {MAX_LIMIT}"
        before = cursors.decode_int("d", cursor) if cursor else None
        errors.raise_if_any()
        items, after = await self.ctx.store.list_deliveries(
            key_id, limit, before, targets=_targets(actor)
        )
        return items, cursors.encode("d", after)

    async def redeliver(self, actor: Actor, key_id: str, delivery_id: str) -> DeliveryRecord:
        await self.keys.get(actor, key_id)
        with conflicts.store_refusals():  # no_webhook_url: the key's URL was cleared
            record = await self.ctx.store.redeliver(
                key_id,
                delivery_id,
                targets=_targets(actor),
                audit=actor.audit("webhook.redeliver", "key", key_id, {"delivery": delivery_id}),
            )
        self.ctx.ring()
        return record

    async def test(self, actor: Actor, key_id: str, body: Any = EMPTY) -> str:
        """A ``key.test`` event to the key's webhook_url; its webhook-id."""
        key = await self.keys.get(actor, key_id)
        _no_fields(body)
        if key.status == "revoked":
            raise conflicts.key_revoked()
        if key.webhook_url is None:
            raise conflicts.no_webhook_url()
        # A 410 stopped every delivery to the URL: the ping would never be sent.
        if await self.ctx.store.webhook_gone(key.webhook_url):
            raise conflicts.webhook_gone()
        msg_id = await self.ctx.store.add_event(
            key_id, events.TEST, {"user": actor.username, "key_id": actor.key_id}
        )
        self.ctx.ring()
        return msg_id

    async def rotate_secret(self, actor: Actor, key_id: str, body: Any = EMPTY) -> str:
        """A new signing secret, returned this once; the old one signs beside it
        for ``ROTATION_OVERLAP``."""
        key = await self.keys.get(actor, key_id)
        _no_fields(body)
        if key.status == "revoked":
            raise conflicts.key_revoked()
        secret = signing.new_secret()
        await self.ctx.store.set_webhook_secret(
            key_id,
            secret,
            overlap_until=utcnow() + ROTATION_OVERLAP,
            audit=actor.audit("key.webhook_secret.rotate", "key", key_id),
        )
        return secret


def _no_fields(body: Any) -> None:
    """An action's body, which has no fields: not an object is 400, a field 422."""
    _, errors = bodies.decode(bodies.EmptyRequest, body)
    errors.raise_if_any()


def _targets(actor: Actor) -> tuple[str, ...]:
    return ADMIN_TARGETS if actor.is_admin else OWNER_TARGETS
