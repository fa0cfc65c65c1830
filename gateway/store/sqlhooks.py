# ruff: noqa: S608 - SQL is assembled only from module constants and the store's
# dialect constants; every value is a bound parameter.
"""Webhooks in SQL, for both stores (docs/webhooks.md): the outbox and its deliveries.

Every key write appends its event to ``webhook_events`` in its own
transaction (``SqlBase._outbox``). The deliverer (``gateway/webhooks/deliverer.py``)
then, in separate short transactions: fans each new event out into one
delivery per receiver (``fan_out``, one process at a time), claims due
deliveries (``claim``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so each is
claimed by exactly one node; SQLite's single deliverer holds a lease,
``take_lease``), and records each attempt (``record_attempt``). A claim
expires (``claimed_until``), so a delivery whose process died is claimed
again: at least once, and in order per key and receiver, since a delivery is
due only once every earlier one to the same receiver for the same key is done.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import orjson

from keygate.gateway.errors import NotFound
from keygate.gateway.store import rows
from keygate.gateway.store.hookrecords import Claimed, DeliveryRecord, Outcome, Target
from keygate.gateway.store.records import AuditEntry, utcnow
from keygate.gateway.store.rows import KEY_READ
from keygate.gateway.store.sqlbase import Conn, SqlBase
from keygate.gateway.webhooks import events

DELIVERY_COLUMNS = (
    "d.id, e.id, e.type, d.target, d.url, d.status, d.attempts, d.next_attempt_at, "
    "d.last_attempt_at, d.last_status, d.last_error, d.last_response, d.created_at"
)
FAN_OUT_BATCH = 200
# Which receivers an event goes to, given its type and the key's URL then.
Fan = Callable[[str, str | None], list[Target]]
# Expiry notices (docs/webhooks.md#events): the notice a key is due, by how
# far away its expiry is.
EXPIRING_SOON = timedelta(days=1)
EXPIRING = timedelta(days=7)
# key.expired is sent for keys that expired at most this long ago: a store
# upgraded to webhooks does not announce every key that ever expired.
EXPIRED_LOOKBACK = timedelta(days=7)
EXPIRY_BATCH = 500


def _delivery_id() -> str:
    return "dlv_" + secrets.token_urlsafe(12)


class HookSql(SqlBase):
    # Appended to the SELECT that picks deliveries to claim.
    SKIP_LOCKED: ClassVar[str]

    async def _fan_out_lock(self, conn: Conn) -> bool:
        """Whether this transaction may fan out now (one process at a time, so
        deliveries are made in event order)."""
        return True

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
        """A new delivery of the same event (same webhook-id) to the same receiver."""

        async def tx(conn: Conn) -> str:
            row = await conn.fetchrow(
                "SELECT event_seq, target, url FROM webhook_deliveries "
                "WHERE id = $1 AND key_id = $2 AND target IN ($3, $4)",
                delivery_id,
                key_id,
                targets[0],
                targets[-1],
            )
            if row is None:
                raise NotFound("No such delivery.")
            new_id = _delivery_id()
            await self._insert_delivery(conn, new_id, row[0], key_id, Target(row[1], row[2]))
            await self._finish(conn, audit, [])
            return new_id

        new_id = await self._tx(tx)
        found = await self._fetchrow(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.seq = d.event_seq WHERE d.id = $1",
            new_id,
        )
        return self._delivery(found)

    # --- the deliverer --------------------------------------------------------
    async def take_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Hold (or keep holding) the lease ``name`` for ``ttl`` seconds."""
        now = utcnow()
        # A lease another holder keeps is seen with a read: waiting workers
        # take no write lock.
        held = await self._fetchrow(
            "SELECT holder, until FROM webhook_leases WHERE name = $1", name
        )
        until = self.codec.time(held[1]) if held is not None else None
        if held is not None and held[0] != holder and until is not None and until > now:
            return False

        async def tx(conn: Conn) -> bool:
            until = self.codec.put_time(now + timedelta(seconds=ttl))
            await conn.execute(
                "INSERT INTO webhook_leases (name, holder, until) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO NOTHING",
                name,
                holder,
                until,
            )
            got = await conn.fetchval(
                "UPDATE webhook_leases SET holder = $2, until = $3 "
                "WHERE name = $1 AND (holder = $2 OR until < $4) RETURNING holder",
                name,
                holder,
                until,
                self.codec.put_time(now),
            )
            return got is not None

        return await self._tx(tx)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._tx(
            lambda conn: conn.execute(
                "DELETE FROM webhook_leases WHERE name = $1 AND holder = $2", name, holder
            )
        )

    async def prune_webhooks(self, before: datetime) -> int:
        """Forget deliveries that ended before ``before``, and events with no
        delivery left (their fan-out done); how many events went."""
        at = self.codec.put_time(before)

        async def tx(conn: Conn) -> int:
            await conn.execute(
                "DELETE FROM webhook_deliveries WHERE status != 'pending' AND updated_at < $1", at
            )
            gone = await conn.fetch(
                "DELETE FROM webhook_events WHERE fanned = $1 AND created_at < $2 AND NOT EXISTS "
                "(SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = webhook_events.seq) "
                "RETURNING seq",
                self.codec.put_flag(True),
                at,
            )
            return len(gone)

        return await self._tx(tx)

    async def webhook_work(self, now: datetime) -> bool:
        """Whether an event waits to be fanned out or a delivery is due: one
        read, so an idle deliverer takes no write lock."""
        at = self.codec.put_time(now)
        found = await self._fetchval(
            "SELECT EXISTS (SELECT 1 FROM webhook_events WHERE fanned = $1) "
            "OR EXISTS (SELECT 1 FROM webhook_deliveries WHERE status = 'pending' "
            "AND next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until < $2))",
            self.codec.put_flag(False),
            at,
        )
        return bool(found)

    async def fan_out(self, fan: Fan) -> int:
        """New events into deliveries, one per receiver ``fan`` names; how many events."""

        async def tx(conn: Conn) -> int:
            if not await self._fan_out_lock(conn):
                return 0
            found = await conn.fetch(
                "SELECT seq, key_id, type, url FROM webhook_events WHERE fanned = $1 "
                "ORDER BY seq LIMIT $2",
                self.codec.put_flag(False),
                FAN_OUT_BATCH,
            )
            if not found:
                return 0
            gone = {r[0] for r in await conn.fetch("SELECT url FROM webhook_gone")}
            for seq, key_id, event, url in found:
                for target in fan(event, url):
                    if target.url not in gone:
                        await self._insert_delivery(conn, _delivery_id(), seq, key_id, target)
            # By seq, each one read: an event with a lower seq may commit only
            # now (another key's), and is fanned out by the next pass.
            seqs = [row[0] for row in found]
            await conn.execute(
                "UPDATE webhook_events SET fanned = $1 WHERE seq IN "
                f"({', '.join(f'${n}' for n in range(2, len(seqs) + 2))})",
                self.codec.put_flag(True),
                *seqs,
            )
            return len(found)

        return await self._tx(tx)

    async def claim(self, holder: str, now: datetime, hold: float, limit: int) -> list[Claimed]:
        """Due deliveries, each claimed by ``holder`` for ``hold`` seconds and
        counted as an attempt; none whose key has an earlier one pending to the
        same receiver."""
        at = self.codec.put_time(now)

        async def tx(conn: Conn) -> list[Claimed]:
            picked = await conn.fetch(
                "SELECT d.seq FROM webhook_deliveries d WHERE d.status = 'pending' "
                "AND d.next_attempt_at <= $1 AND (d.claimed_until IS NULL OR d.claimed_until < $1) "
                "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.key_id = d.key_id "
                "AND p.url = d.url AND p.status = 'pending' AND p.event_seq < d.event_seq) "
                f"ORDER BY d.event_seq LIMIT $2{self.SKIP_LOCKED}",
                at,
                limit,
            )
            out = []
            for (seq,) in picked:
                row = await conn.fetchrow(
                    "UPDATE webhook_deliveries SET claimed_by = $2, claimed_until = $3, "
                    "attempts = attempts + 1, last_attempt_at = $4, updated_at = $4 "
                    "WHERE seq = $1 RETURNING id, key_id, target, url, attempts, event_seq",
                    seq,
                    holder,
                    self.codec.put_time(now + timedelta(seconds=hold)),
                    at,
                )
                event = await conn.fetchrow(
                    "SELECT e.id, e.type, e.body, e.secrets, k.webhook_secret, "
                    "k.webhook_secret_prev, k.webhook_secret_prev_until FROM webhook_events e "
                    "LEFT JOIN keys k ON k.id = e.key_id WHERE e.seq = $1",
                    row[5],
                )
                out.append(
                    Claimed(
                        seq=seq,
                        id=row[0],
                        key_id=row[1],
                        target=row[2],
                        url=row[3],
                        attempts=row[4],
                        event_id=event[0],
                        event=event[1],
                        body=event[2].encode(),
                        secrets=self._signing(event, now) if row[2] == "key" else (),
                    )
                )
            return out

        return await self._tx(tx)

    def _signing(self, event: Any, now: datetime) -> tuple[str, ...]:
        current, prev, until = event[4], event[5], self.codec.time(event[6])
        if current is None:  # the key is gone: what it had when it was deleted
            return tuple(orjson.loads(event[3])) if event[3] else ()
        if prev is not None and until is not None and until > now:
            return (current, prev)
        return (current,)

    async def record_attempt(
        self, claimed: Claimed, holder: str, outcome: Outcome, *, audit: AuditEntry | None
    ) -> None:
        """Write how an attempt ended; a 410 also stops every delivery to that URL."""
        now = self._now()

        async def tx(conn: Conn) -> None:
            status = {"delivered": "delivered", "retry": "pending", "gone": "failed"}.get(
                outcome.result, "abandoned"
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4, "
                "claimed_by = NULL, claimed_until = NULL, last_status = $5, last_error = $6, "
                "last_response = $7, updated_at = $8 WHERE seq = $1 AND claimed_by = $2",
                claimed.seq,
                holder,
                status,
                self.codec.put_time(outcome.next_attempt_at),
                outcome.status,
                outcome.error,
                outcome.response,
                now,
            )
            if outcome.result == "gone":
                await conn.execute(
                    "INSERT INTO webhook_gone (url, at) VALUES ($1, $2) "
                    "ON CONFLICT (url) DO NOTHING",
                    claimed.url,
                    now,
                )
                await conn.execute(
                    "UPDATE webhook_deliveries SET status = 'failed', claimed_by = NULL, "
                    "last_error = $2, updated_at = $3 WHERE url = $1 AND status = 'pending'",
                    claimed.url,
                    "the receiver answered 410 Gone to an earlier delivery",
                    now,
                )
                if audit is not None:
                    await self._audit(conn, audit)

        await self._tx(tx)

    async def expiry_notices(self, now: datetime) -> int:
        """key.expiring (7 days, 1 day before) and key.expired, each written once
        per key and expiry, whichever process gets there first; how many."""

        async def tx(conn: Conn) -> int:
            found = await conn.fetch(
                f"SELECT {KEY_READ} FROM keys WHERE status = 'active' "
                "AND expires_at IS NOT NULL AND expires_at <= $1 AND expires_at > $2 "
                f"ORDER BY expires_at LIMIT $3{self.FOR_UPDATE}",
                self.codec.put_time(now + EXPIRING),
                self.codec.put_time(now - EXPIRED_LOOKBACK),
                EXPIRY_BATCH,
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
