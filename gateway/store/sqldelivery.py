# ruff: noqa: S608 - SQL is assembled only from module constants and the store's
# dialect constants; every value is a bound parameter.
"""The deliverer's side of the webhook outbox, for both stores (docs/webhooks.md#delivery).

``fan_out`` turns new events into one delivery per receiver (one process at
a time, so deliveries are made in event order); ``claim`` hands due
deliveries to one process each (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
SQLite's single deliverer holds a lease, ``take_lease``) and counts the
attempt; ``record_attempt`` writes how it ended. A claim expires, so a
delivery whose process died is claimed again: at least once, and in order
per key and receiver, since a delivery is due only once every earlier one to
the same receiver for the same key is done.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar

import orjson

from keygate.gateway.store.hookrecords import Claimed, Outcome, Target
from keygate.gateway.store.records import AuditEntry, utcnow
from keygate.gateway.store.sqlbase import Conn
from keygate.gateway.store.sqlhooks import HookSql, new_delivery_id

FAN_OUT_BATCH = 200
# Why a delivery to a URL its key dropped ended unsent.
URL_CHANGED = "webhook_url changed"
# Which receivers an event goes to, given its type and the key's URL then.
Fan = Callable[[str, str | None], list[Target]]


class DeliverySql(HookSql):
    # Appended to the SELECT that picks deliveries to claim.
    SKIP_LOCKED: ClassVar[str]

    async def _fan_out_lock(self, conn: Conn) -> bool:
        """Whether this transaction may fan out now (one process at a time, so
        deliveries are made in event order)."""
        return True

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

    async def webhook_backlog(self) -> int:
        # Both counts run on an index (webhook_deliveries_due, webhook_events_fanned).
        found = await self._fetchval(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') "
            "+ (SELECT count(*) FROM webhook_events WHERE fanned = $1)",
            self.codec.put_flag(False),
        )
        return int(found or 0)

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
                        await self._insert_delivery(conn, new_delivery_id(), seq, key_id, target)
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
        same receiver. One to a URL its key no longer has ends abandoned
        instead, unsent and uncounted (``_url_dropped``)."""
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
                if await self._url_dropped(conn, seq, at):
                    continue
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

    async def _url_dropped(self, conn: Conn, seq: int, at: Any) -> bool:
        """Whether the delivery goes to a URL its key no longer has (changed or
        cleared since the event): it is not sent but ends abandoned. A deleted
        key's last events still go to the URL it had; an operator's endpoint
        is not the key's to change (docs/webhooks.md#delivery)."""
        row = await conn.fetchrow(
            "SELECT d.url, k.id, k.webhook_url FROM webhook_deliveries d "
            "LEFT JOIN keys k ON k.id = d.key_id WHERE d.seq = $1 AND d.target = 'key'",
            seq,
        )
        if row is None or row[1] is None or row[2] == row[0]:
            return False
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'abandoned', next_attempt_at = NULL, "
            "claimed_by = NULL, claimed_until = NULL, last_error = $2, updated_at = $3 "
            "WHERE seq = $1",
            seq,
            URL_CHANGED,
            at,
        )
        return True

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
