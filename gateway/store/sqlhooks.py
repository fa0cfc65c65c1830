# ruff: noqa: S608 - SQL is assembled only from module constants and the store's
# dialect constants; every value is a bound parameter.
"""Webhooks in SQL, for both stores (docs/webhooks.md): the outbox as the
services see it, and the notices keygate writes by itself.

Every key write appends its event to ``webhook_events`` in its own
transaction (``SqlBase._append``); so do a test ping (``add_event``), an
expiry notice (``expiry_notices``, once per key and expiry: a marker row
claimed in the same transaction) and a traffic notice (``traffic_notice``,
once per cooldown). Here too: a key's signing secrets, its deliveries and
redelivery. What the deliverer does with the outbox is ``sqldelivery.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from keygate.gateway.errors import NotFound
from keygate.gateway.store import rows
from keygate.gateway.store.errors import NoWebhookUrl
from keygate.gateway.store.hookrecords import DeliveryRecord, Target
from keygate.gateway.store.records import AuditEntry
from keygate.gateway.store.rows import KEY_READ
from keygate.gateway.store.sqlbase import Conn, SqlBase
from keygate.gateway.webhooks import events

DELIVERY_COLUMNS = (
    "d.id, e.id, e.type, d.target, d.url, d.status, d.attempts, d.next_attempt_at, "
    "d.last_attempt_at, d.last_status, d.last_error, d.last_response, d.created_at"
)
# Expiry notices (docs/webhooks.md#events): the notice a key is due, by how
# far away its expiry is.
EXPIRING_SOON = timedelta(days=1)
EXPIRING = timedelta(days=7)
# key.expired is sent for keys that expired at most this long ago: a store
# upgraded to webhooks does not announce every key that ever expired.
EXPIRED_LOOKBACK = timedelta(days=7)
EXPIRY_BATCH = 500


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_urlsafe(12)


class HookSql(SqlBase):
    # --- per key --------------------------------------------------------------
    async def webhook_secrets(self, key_id: str) -> tuple[str | None, str | None, datetime | None]:
        """The key's secret, its previous one and when that one stops signing."""
        row = await self._fetchrow(
            "SELECT webhook_secret, webhook_secret_prev, webhook_secret_prev_until "
            "FROM keys WHERE id = $1",
            key_id,
        )
        if row is None:
            raise NotFound("No such key.")
        return row[0], row[1], self.codec.time(row[2])

    async def set_webhook_secret(
        self, key_id: str, secret: str, *, overlap_until: datetime | None, audit: AuditEntry
    ) -> None:
        """A new secret; the current one keeps signing until ``overlap_until``."""

        async def tx(conn: Conn) -> None:
            done = await conn.fetchval(
                "UPDATE keys SET webhook_secret_prev = webhook_secret, "
                "webhook_secret_prev_until = $2, webhook_secret = $3, updated_at = $4 "
                "WHERE id = $1 RETURNING id",
                key_id,
                self.codec.put_time(overlap_until),
                secret,
                self._now(),
            )
            if done is None:
                raise NotFound("No such key.")
            await self._finish(conn, audit, [])

        await self._tx(tx)

    async def webhook_gone(self, url: str) -> bool:
        """Whether a 410 from ``url`` stopped deliveries to it (until a key sets it again)."""
        found = await self._fetchval("SELECT 1 FROM webhook_gone WHERE url = $1", url)
        return found is not None

    async def add_event(
        self, key_id: str, event: str, actor: dict[str, Any] | None
    ) -> str:
        """An event about the key as it stands (a test ping); its webhook-id."""

        async def tx(conn: Conn) -> str:
            # Locked as read, like every key write: the key's events stay in order.
            row = await conn.fetchrow(
                f"SELECT {KEY_READ} FROM keys WHERE id = $1{self.FOR_UPDATE}", key_id
            )
            if row is None:
                raise NotFound("No such key.")
            return await self._append(conn, event, rows.key_from_row(row, self.codec), actor)

        return await self._tx(tx)

    async def list_deliveries(
        self, key_id: str, limit: int, before: int | None, *, targets: Sequence[str]
    ) -> tuple[list[DeliveryRecord], int | None]:
        """Newest first; ``before`` is the last seq of the previous page."""
        found = await self._fetch(
            f"SELECT {DELIVERY_COLUMNS}, d.seq FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.seq = d.event_seq "
            "WHERE d.key_id = $1 AND d.seq < $2 AND d.target IN ($3, $4) "
            "ORDER BY d.seq DESC LIMIT $5",
            key_id,
            before if before is not None else 2**62,
            targets[0],
            targets[-1],
            limit + 1,
        )
        items = [self._delivery(r) for r in found[:limit]]
        return items, (found[limit - 1][13] if len(found) > limit else None)

    async def redeliver(
        self, key_id: str, delivery_id: str, *, targets: Sequence[str], audit: AuditEntry
    ) -> DeliveryRecord:
        """A new delivery of the same event (same webhook-id) to the same receiver:
        an operator's endpoint, or the key's webhook_url as it is now (not the
        one the delivery went to: a URL the key dropped gets nothing more)."""

        async def tx(conn: Conn) -> str:
            row = await conn.fetchrow(
                "SELECT d.event_seq, d.target, d.url, k.webhook_url FROM webhook_deliveries d "
                "JOIN keys k ON k.id = d.key_id "
                "WHERE d.id = $1 AND d.key_id = $2 AND d.target IN ($3, $4)",
                delivery_id,
                key_id,
                targets[0],
                targets[-1],
            )
            if row is None:
                raise NotFound("No such delivery.")
            url = row[2]
            if row[1] == "key":
                if row[3] is None:
                    raise NoWebhookUrl
                url = row[3]
            new_id = new_delivery_id()
            await self._insert_delivery(conn, new_id, row[0], key_id, Target(row[1], url))
            await self._finish(conn, audit, [])
            return new_id

        new_id = await self._tx(tx)
        found = await self._fetchrow(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.seq = d.event_seq WHERE d.id = $1",
            new_id,
        )
        return self._delivery(found)

    # --- notices keygate writes by itself ------------------------------------------
    async def expiry_notices(self, now: datetime) -> int:
        """key.expiring (7 days, 1 day before) and key.expired, each written once
        per key and expiry, whichever process gets there first; how many."""

        async def tx(conn: Conn) -> int:
            soon, now_at = self.codec.put_time(now + EXPIRING_SOON), self.codec.put_time(now)
            # Only keys whose due notice is not yet marked: a pass that finds
            # nothing to send reads a few index entries and locks nothing.
            found = await conn.fetch(
                f"SELECT {KEY_READ} FROM keys WHERE status = 'active' "
                "AND expires_at IS NOT NULL AND expires_at <= $1 AND expires_at > $2 "
                "AND NOT EXISTS (SELECT 1 FROM webhook_expiry_sent m WHERE m.key_id = keys.id "
                "AND m.expires_at = keys.expires_at AND m.kind = CASE "
                "WHEN keys.expires_at <= $4 THEN 'expired' "
                "WHEN keys.expires_at <= $5 THEN '1d' ELSE '7d' END) "
                f"ORDER BY expires_at LIMIT $3{self.FOR_UPDATE}",
                self.codec.put_time(now + EXPIRING),
                self.codec.put_time(now - EXPIRED_LOOKBACK),
                EXPIRY_BATCH,
                now_at,
                soon,
            )
            written = 0
            for row in found:
                key = rows.key_from_row(row, self.codec)
                assert key.expires_at is not None
                left = key.expires_at - now
                if left <= timedelta(0):
                    kind, event, extra = "expired", events.EXPIRED, None
                elif left <= EXPIRING_SOON:
                    kind, event, extra = "1d", events.EXPIRING, {"notice": "1d"}
                else:
                    kind, event, extra = "7d", events.EXPIRING, {"notice": "7d"}
                claimed = await conn.fetchval(
                    "INSERT INTO webhook_expiry_sent (key_id, kind, expires_at) "
                    "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING key_id",
                    key.id,
                    kind,
                    self.codec.put_time(key.expires_at),
                )
                if claimed is not None:
                    await self._append(conn, event, key, None, extra, at=now)
                    written += 1
            return written

        return await self._tx(tx)

    async def traffic_notice(self, key_id: str, event: str, cooldown: float, now: datetime) -> bool:
        """A traffic notice, unless one of its type went out for the key within
        ``cooldown`` seconds (from any process); whether it was written."""

        async def tx(conn: Conn) -> bool:
            at = self.codec.put_time(now)
            due = await conn.fetchval(
                "UPDATE webhook_traffic SET last_at = $3 "
                "WHERE key_id = $1 AND type = $2 AND last_at <= $4 RETURNING key_id",
                key_id,
                event,
                at,
                self.codec.put_time(now - timedelta(seconds=cooldown)),
            )
            if due is None:
                due = await conn.fetchval(
                    "INSERT INTO webhook_traffic (key_id, type, last_at) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING RETURNING key_id",
                    key_id,
                    event,
                    at,
                )
            if due is None:
                return False
            row = await conn.fetchrow(
                f"SELECT {KEY_READ} FROM keys WHERE id = $1{self.FOR_UPDATE}", key_id
            )
            if row is None:
                return False
            await self._append(conn, event, rows.key_from_row(row, self.codec), None, at=now)
            return True

        return await self._tx(tx)

    # --- shared steps -----------------------------------------------------------
    async def _insert_delivery(
        self, conn: Conn, delivery_id: str, event_seq: int, key_id: str, target: Target
    ) -> None:
        now = self._now()
        await conn.execute(
            "INSERT INTO webhook_deliveries (id, event_seq, key_id, target, url, status, "
            "attempts, next_attempt_at, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)",
            delivery_id,
            event_seq,
            key_id,
            target.target,
            target.url,
            now,
        )

    def _delivery(self, row: Any) -> DeliveryRecord:
        c = self.codec
        return DeliveryRecord(
            id=row[0],
            event_id=row[1],
            event=row[2],
            target=row[3],
            url=row[4],
            status=row[5],
            attempts=row[6],
            next_attempt_at=c.time(row[7]),
            last_attempt_at=c.time(row[8]),
            last_status=row[9],
            last_error=row[10],
            last_response=row[11],
            created_at=c.time(row[12]),  # type: ignore[arg-type]
        )
