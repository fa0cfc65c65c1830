# ruff: noqa: S608 - SQL is assembled only from module constants and the store's
# dialect constants; every value is a bound parameter.
"""The frame of the SQL both stores share: connection, dialect, every write's trail.

``SqlBase`` declares what each store provides (transactions, reads, locks,
change notices, the SQL it spells its own way) and holds the steps writes
share (the audit record, a row's update, a unique index's refusal as a
``UniqueViolation``), the trail's reading side (audit records, change
notices) and the call into the migration runner. The operations themselves
are in ``sqlkeys.py``, ``sqlusers.py`` and ``sqlgroups.py``, gathered by
``sqlstore.py``.

Statements use PostgreSQL's numbered parameters (``$1``, ``$2``, …); the
SQLite store's connection (``sqlite/connection.py``) rewrites them for SQLite.
A write is ``self._tx(fn)``: ``fn`` runs on a ``Conn`` inside one transaction
and ends with ``self._finish``, which appends the audit record and the change
notices in that same transaction (see ``base.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from keygate.gateway.store import rows
from keygate.gateway.store.base import Store
from keygate.gateway.store.clauses import Params, set_list
from keygate.gateway.store.errors import Unique, UniqueViolation
from keygate.gateway.store.migrate import Schema, apply_pending
from keygate.gateway.store.records import (
    AuditEntry,
    AuditQuery,
    AuditRecord,
    Change,
    KeyRecord,
    Page,
    utcnow,
)
from keygate.gateway.store.rows import (
    AUDIT_COLUMNS,
    AUDIT_INSERT_COLUMNS,
    GROUP_COLUMNS,
    KEY_READ,
    USER_COLUMNS,
    Codec,
    json_text,
    placeholders,
)
from keygate.gateway.webhooks import events

T = TypeVar("T")
# Change notices a write appends: (kind, ref), kind being key, key-created, user or group.
Notices = list[tuple[str, str]]
# Changes older than this are pruned at open; a worker that slept longer than
# this has long outlived cache_ttl anyway.
CHANGE_RETENTION = 86400.0  # seconds
# What an update of each table returns: the columns its record is read from.
RETURNING = {"keys": KEY_READ, "users": USER_COLUMNS, "groups": GROUP_COLUMNS}


class Conn(Protocol):
    """What the shared statements need of a connection: asyncpg's calls, with
    asyncpg's signatures (hence ``timeout``, a bound on one statement)."""

    async def execute(
        self, sql: str, *args: Any, timeout: float | None = None  # noqa: ASYNC109
    ) -> Any: ...

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> Any: ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Any: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


Tx = Callable[[Conn], Awaitable[T]]


class SqlBase(Store):
    """What every shared statement stands on: the dialect, the hooks each store
    provides, and the steps every write shares."""

    codec: ClassVar[Codec]
    schema: ClassVar[Schema]
    # What a unique index's refusal raises.
    UNIQUE: ClassVar[tuple[type[BaseException], ...]]
    # Appended to a SELECT inside a write: locks the rows it reads until commit.
    FOR_UPDATE: ClassVar[str]
    # Compares and sorts text byte by byte, whatever the database's locale.
    BYTEWISE: ClassVar[str]
    # A lower() that folds non-ASCII case too.
    LOWER: ClassVar[str]
    # Given a placeholder: "the row's groups hold this group", and the row's
    # groups without it.
    HOLDS_GROUP: ClassVar[str]
    WITHOUT_GROUP: ClassVar[str]
    # Whether a list binds as one array parameter (``= ANY($1)``), else as
    # one placeholder per value (``IN ($1, …)``).
    ARRAYS: ClassVar[bool]
    # "The key is imported", spelt as the partial index keys_imported is.
    IMPORTED: ClassVar[str]

    # --- what each store provides -------------------------------------------
    @abc.abstractmethod
    async def _tx(self, fn: Tx[T]) -> T:
        """``fn`` in one write transaction: committed if it returns, else rolled back."""

    @abc.abstractmethod
    async def _read(self, method: str, sql: str, *args: Any) -> Any:
        """``Conn.<method>(sql, *args)`` outside any write; StoreUnavailable when
        the store does not answer."""

    @abc.abstractmethod
    async def _finish(self, conn: Conn, audit: AuditEntry | None, changes: Notices) -> None:
        """The last step of every write: its audit record, then its change notices."""

    @abc.abstractmethod
    async def _lock_owner(self, conn: Conn, owner_id: str) -> None:
        """Until commit, no other write may count or revoke this owner's keys."""

    @abc.abstractmethod
    def _names_clash(self, exc: BaseException) -> bool:
        """Whether a UNIQUE error is two keys of one owner named alike."""

    # --- shared steps -------------------------------------------------------------
    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self._read("fetch", sql, *args)  # type: ignore[no-any-return]

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._read("fetchrow", sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._read("fetchval", sql, *args)

    def _among(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the condition (its parameters from
        ``$1``) and the arguments it binds."""
        if self.ARRAYS:
            return f"{column} = ANY($1)", [list(values)]
        return f"{column} IN ({placeholders(len(values))})", list(values)

    async def _audit(self, conn: Conn, entry: AuditEntry) -> None:
        await conn.execute(
            f"INSERT INTO audit ({AUDIT_INSERT_COLUMNS}) VALUES ({placeholders(9)})",
            *rows.audit_values(entry, utcnow(), self.codec),
        )

    async def _append(
        self,
        conn: Conn,
        event: str,
        key: KeyRecord,
        actor: dict[str, Any] | None,
        extra: dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
        secrets: list[str] | None = None,
    ) -> str:
        """Append a webhook event about ``key`` to the outbox, in the caller's
        transaction (docs/webhooks.md); its webhook-id. ``secrets``: the key's
        signing secrets, kept only when its row is about to go."""
        when = at or utcnow()
        msg_id = events.message_id()
        await conn.execute(
            "INSERT INTO webhook_events (id, key_id, type, body, url, secrets, fanned, "
            "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            msg_id,
            key.id,
            event,
            events.body(event, when, key, actor, extra).decode(),
            key.webhook_url,
            json_text(secrets) if secrets else None,
            self.codec.put_flag(False),
            self.codec.put_time(when),
        )
        return msg_id

    async def _key_event(
        self, conn: Conn, event: str | None, key: KeyRecord, audit: AuditEntry | None, **kw: Any
    ) -> None:
        """A key write's event, acted by whoever its audit record names."""
        if event is None:
            return
        actor = None
        if audit is not None and (audit.actor_username or audit.actor_key_id):
            actor = {"user": audit.actor_username, "key_id": audit.actor_key_id}
        await self._append(conn, event, key, actor, **kw)

    def _now(self) -> Any:
        return self.codec.put_time(utcnow())

    async def _update(
        self, conn: Conn, table: str, where: str, args: Sequence[Any], fields: Mapping[str, Any]
    ) -> Any:
        """Write allow-listed ``fields`` and ``updated_at`` to the row ``where``
        finds (``args`` are its parameters, from ``$1``); the row as written
        (the table's record columns), or None when there is none."""
        bind = Params(*args)
        sets = set_list(fields, bind, self.codec)
        return await conn.fetchrow(
            f"UPDATE {table} SET {sets}updated_at = {bind(self._now())} WHERE {where} "
            f"RETURNING {RETURNING[table]}",
            *bind.values,
        )

    @contextmanager
    def _duplicates(self, what: Unique | None = None) -> Iterator[None]:
        """A unique index's refusal inside, as ``UniqueViolation(what)``; for a
        key (``what`` None), whether it was the owner's name for it or another."""
        try:
            yield
        except self.UNIQUE as exc:
            if what is None:
                what = "key_name" if self._names_clash(exc) else "other"
            raise UniqueViolation(what) from None

    async def migrate(self) -> list[int]:
        return await self._tx(self._migrate)

    async def _migrate(self, conn: Conn) -> list[int]:
        return await apply_pending(conn, self.schema)

    # --- the trail: audit records and change notices --------------------------------
    async def list_audit(
        self, limit: int, before_id: int | None, query: AuditQuery | None = None
    ) -> Page[AuditRecord]:
        bind = Params(before_id if before_id is not None else 2**62)
        where = "id < $1"
        q = query or AuditQuery()
        for column, value in (
            ("target_type", q.target_type),
            ("target_id", q.target_id),
            ("actor_username", q.actor),
        ):
            if value is not None:
                where += f" AND {column} = {bind(value)}"
        found = await self._fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {where} ORDER BY id DESC "
            f"LIMIT {bind(limit + 1)}",
            *bind.values,
        )
        items = [rows.audit_from_row(r, self.codec) for r in found[:limit]]
        return Page(items, items[-1].id if len(found) > limit else None)

    async def change_seq(self) -> int:
        return int(await self._fetchval("SELECT coalesce(max(seq), 0) FROM changes"))

    async def changes_since(self, seq: int) -> list[Change]:
        found = await self._fetch(
            "SELECT seq, kind, ref FROM changes WHERE seq > $1 ORDER BY seq", seq
        )
        return [rows.change_from_row(r) for r in found]

