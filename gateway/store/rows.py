"""Records to rows and back: the column lists and the mappers both stores share.

The two databases keep the same tables (docs/reference.md#key-record) in
their own types: SQLite has REAL epoch seconds, JSON text and 0/1 integers
where PostgreSQL has ``timestamptz``, ``jsonb`` and ``boolean``. A ``Codec``
says how one database holds those values; everything else about a row is
the same on both, and is written once here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from keygate.gateway.store.records import (
    AuditEntry,
    AuditRecord,
    AuthRecord,
    Change,
    GroupRecord,
    KeyAuth,
    KeyRecord,
    UserRecord,
)


@dataclass(frozen=True, slots=True)
class Codec:
    """How one database holds times, JSON documents and flags."""

    time: Callable[[Any], datetime | None]  # a stored time, as an aware datetime
    epoch: Callable[[Any], float | None]  # a stored time, as epoch seconds
    doc: Callable[[Any], Any]  # a stored JSON document, decoded
    put_time: Callable[[datetime | None], Any]
    put_doc: Callable[[Any], Any]
    put_flag: Callable[[bool], Any]


# The mappers below read these columns by position: change both together.
KEY_COLUMNS = (
    "seq, id, prefix, last4, name, description, status, groups, owner_id, owner_username, "
    "created_by_id, created_by_username, created_at, updated_at, last_used_at, expires_at, "
    "webhook_url, metadata, disabled_by_id, disabled_by_username, disabled_by_admin, "
    "expires_by_admin, rate_limits, quota, allowed_ips, quota_used, quota_window, imported"
)
# What every key read selects: KEY_COLUMNS, then the avatar's etag (NULL when
# the key has none) from its own table, always as the LAST column, so that a
# column added to KEY_COLUMNS never moves it (docs/admin-api.md#avatars).
KEY_AVATAR_ETAG = "(SELECT a.etag FROM key_avatars a WHERE a.key_id = keys.id)"
KEY_READ = f"{KEY_COLUMNS}, {KEY_AVATAR_ETAG}"
USER_COLUMNS = "id, username, role, groups, status, created_at, updated_at"
GROUP_COLUMNS = "name, description, rules, builtin, created_at, updated_at"
AUDIT_COLUMNS = (
    "id, at, action, target_type, target_id, actor_user_id, actor_username, "
    "actor_key_id, client_addr, changes"
)
# A key (k) and its owner (u, LEFT JOINed: the owner may be gone).
AUTH_COLUMNS = (
    "k.id, k.name, k.status, k.groups, k.expires_at, k.owner_id, "
    "u.username, u.role, u.status, u.groups, "
    "k.rate_limits, k.quota, k.allowed_ips, k.quota_used, k.quota_window"
)
# Where the columns a lookup appends to AUTH_COLUMNS start.
AUTH_WIDTH = 15
# What ``key_values`` and ``audit_values`` fill, in this order.
KEY_INSERT_COLUMNS = (
    "id, digest, prefix, last4, name, name_key, description, status, groups, owner_id, "
    "owner_username, created_by_id, created_by_username, created_at, updated_at, last_used_at, "
    "expires_at, webhook_url, metadata, disabled_by_id, disabled_by_username, "
    "disabled_by_admin, expires_by_admin, rate_limits, quota, allowed_ips, imported"
)
KEY_INSERT_WIDTH = 27
AUDIT_INSERT_COLUMNS = (
    "at, action, target_type, target_id, actor_user_id, actor_username, actor_key_id, "
    "client_addr, changes"
)


def as_is(value: Any) -> Any:
    return value


def epoch_seconds(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def json_text(value: Any) -> str:
    """JSON as both databases are given it; what JSON cannot hold is its str()."""
    return orjson.dumps(value, default=str).decode()


def placeholders(count: int) -> str:
    """``$1, $2, …, $count``."""
    return ", ".join(f"${i}" for i in range(1, count + 1))


# --- reading ----------------------------------------------------------------
def key_from_row(row: Any, codec: Codec) -> KeyRecord:
    """A row of KEY_READ."""
    return KeyRecord(
        seq=row[0],
        id=row[1],
        prefix=row[2],
        last4=row[3],
        name=row[4],
        description=row[5],
        status=row[6],
        groups=tuple(codec.doc(row[7])),
        owner_id=row[8],
        owner_username=row[9],
        created_by_id=row[10],
        created_by_username=row[11],
        created_at=codec.time(row[12]),  # type: ignore[arg-type]
        updated_at=codec.time(row[13]),  # type: ignore[arg-type]
        last_used_at=codec.time(row[14]),
        expires_at=codec.time(row[15]),
        webhook_url=row[16],
        metadata=codec.doc(row[17]),
        disabled_by_id=row[18],
        disabled_by_username=row[19],
        disabled_by_admin=bool(row[20]),
        expires_by_admin=bool(row[21]),
        rate_limits=tuple(codec.doc(row[22])),
        quota=codec.doc(row[23]) if row[23] is not None else None,
        allowed_ips=tuple(codec.doc(row[24])),
        quota_used=int(row[25]),
        quota_window=row[26],
        imported=bool(row[27]),
        avatar_etag=row[len(row) - 1],  # KEY_READ's last column
    )


def user_from_row(row: Any, codec: Codec) -> UserRecord:
    return UserRecord(
        id=row[0],
        username=row[1],
        role=row[2],
        groups=tuple(codec.doc(row[3])),
        status=row[4],
        created_at=codec.time(row[5]),  # type: ignore[arg-type]
        updated_at=codec.time(row[6]),  # type: ignore[arg-type]
    )


def group_from_row(row: Any, codec: Codec) -> GroupRecord:
    return GroupRecord(
        name=row[0],
        description=row[1],
        rules=tuple(codec.doc(row[2])),
        builtin=bool(row[3]),
        created_at=codec.time(row[4]),  # type: ignore[arg-type]
        updated_at=codec.time(row[5]),  # type: ignore[arg-type]
    )


def audit_from_row(row: Any, codec: Codec) -> AuditRecord:
    return AuditRecord(
        id=row[0],
        at=codec.time(row[1]),  # type: ignore[arg-type]
        action=row[2],
        target_type=row[3],
        target_id=row[4],
        actor_user_id=row[5],
        actor_username=row[6],
        actor_key_id=row[7],
        client_addr=row[8],
        changes=codec.doc(row[9]),
    )


def change_from_row(row: Any) -> Change:
    return Change(row[0], row[1], row[2])


def auth_from_row(row: Any, until: Any, codec: Codec) -> AuthRecord:
    """A row of AUTH_COLUMNS; ``until`` is a rolled-away digest's grace (None: current)."""
    return AuthRecord(
        key_id=row[0],
        key_name=row[1],
        key_status=row[2],
        key_groups=tuple(codec.doc(row[3])),
        expires_at=codec.epoch(row[4]),
        owner_id=row[5],
        owner_username=row[6],
        owner_role=row[7],
        owner_status=row[8],
        owner_groups=tuple(codec.doc(row[9])) if row[9] is not None else (),
        grace_until=codec.epoch(until),
        rate_limits=tuple(codec.doc(row[10])),
        quota=codec.doc(row[11]) if row[11] is not None else None,
        allowed_ips=tuple(codec.doc(row[12])),
        quota_used=int(row[13]),
        quota_window=row[14],
    )


def match_key_rows(rows: Sequence[Any], digest: bytes, codec: Codec) -> KeyAuth:
    """``auth_lookup_key``'s answer from rows of (AUTH_COLUMNS, until, current
    digest, retired digest): one row per retired digest, or one with NULLs.

    The current digest wins over a retired one, as in ``auth_lookup``.
    """
    if not rows:
        return KeyAuth(None, frozenset())
    until, now_at, old_at = AUTH_WIDTH, AUTH_WIDTH + 1, AUTH_WIDTH + 2
    current = bytes(rows[0][now_at])
    retired = [(bytes(row[old_at]), row) for row in rows if row[old_at] is not None]
    record = None
    if digest == current:
        record = auth_from_row(rows[0], None, codec)
    else:
        for old, row in retired:
            if digest == old:
                record = auth_from_row(row, row[until], codec)
                break
    return KeyAuth(record, frozenset([current, *(old for old, _ in retired)]))


# --- writing ----------------------------------------------------------------
def key_values(key: KeyRecord, digest: bytes, codec: Codec) -> tuple[Any, ...]:
    """The values of KEY_INSERT_COLUMNS for a new key (never used yet)."""
    return (
        key.id,
        digest,
        key.prefix,
        key.last4,
        key.name,
        key.name.casefold(),  # name_key: per-owner, case-insensitive uniqueness
        key.description,
        key.status,
        codec.put_doc(list(key.groups)),
        key.owner_id,
        key.owner_username,
        key.created_by_id,
        key.created_by_username,
        codec.put_time(key.created_at),
        codec.put_time(key.updated_at),
        None,
        codec.put_time(key.expires_at),
        key.webhook_url,
        codec.put_doc(key.metadata),
        key.disabled_by_id,
        key.disabled_by_username,
        codec.put_flag(key.disabled_by_admin),
        codec.put_flag(key.expires_by_admin),
        codec.put_doc([dict(p) for p in key.rate_limits]),
        codec.put_doc(dict(key.quota)) if key.quota is not None else None,
        codec.put_doc(list(key.allowed_ips)),
        codec.put_flag(key.imported),
    )


def user_values(user: UserRecord, codec: Codec) -> tuple[Any, ...]:
    """The values of USER_COLUMNS."""
    return (
        user.id,
        user.username,
        user.role,
        codec.put_doc(list(user.groups)),
        user.status,
        codec.put_time(user.created_at),
        codec.put_time(user.updated_at),
    )


def group_values(group: GroupRecord, codec: Codec) -> tuple[Any, ...]:
    """The values of GROUP_COLUMNS."""
    return (
        group.name,
        group.description,
        codec.put_doc(list(group.rules)),
        codec.put_flag(group.builtin),
        codec.put_time(group.created_at),
        codec.put_time(group.updated_at),
    )


def audit_values(entry: AuditEntry, at: datetime, codec: Codec) -> tuple[Any, ...]:
    """The values of AUDIT_INSERT_COLUMNS."""
    return (
        codec.put_time(at),
        entry.action,
        entry.target_type,
        entry.target_id,
        entry.actor_user_id,
        entry.actor_username,
        entry.actor_key_id,
        entry.client_addr,
        codec.put_doc(entry.changes),
    )
