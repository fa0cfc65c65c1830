"""Upgrading a store in place: a version-1 store (written as version 1 wrote it)
opened by this keygate keeps every key and learns who disabled it and whose
expiry it carries from the audit trail (docs/admin-api.md, "Blocks")."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest

from keygate.gateway.store.base import Store
from keygate.gateway.store.postgres.migrations import PG_SCHEMA, PG_V1
from keygate.gateway.store.postgres.store import PostgresStore
from keygate.gateway.store.records import AuditEntry
from keygate.gateway.store.sqlite.migrations import SQLITE_SCHEMA, SQLITE_V1
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.pg import reset_schema

OWNER, ADMIN = "u-alice", "u-admin"
FUTURE = time.time() + 86400

# (key id, status, expires_at): the keys of the version-1 store.
KEYS = [
    ("ownerdisabld", "disabled", None),
    ("admindisabld", "disabled", None),
    ("clidisabled0", "disabled", None),
    ("untrackeddis", "disabled", None),
    ("reenabled000", "active", None),
    ("ownerexpires", "active", FUTURE),
    ("adminexpires", "active", FUTURE),
    ("adminthenown", "active", FUTURE),
    ("untrackedexp", "active", FUTURE),
]
# (target key id, actor user id, actor username, changes), oldest first.
AUDIT = [
    ("ownerdisabld", OWNER, "alice", {"status": "disabled"}),
    ("admindisabld", ADMIN, "root", {"status": "disabled"}),
    ("clidisabled0", None, "cli:ops", {"status": "disabled"}),
    ("reenabled000", ADMIN, "root", {"status": "disabled"}),
    ("reenabled000", ADMIN, "root", {"status": "active"}),
    ("ownerexpires", OWNER, "alice", {"name": "k", "expires_at": "2099-01-01T00:00:00+00:00"}),
    ("adminexpires", ADMIN, "root", {"name": "k", "expires_at": "2099-01-01T00:00:00+00:00"}),
    ("adminthenown", OWNER, "alice", {"expires_at": None}),
    ("adminthenown", ADMIN, "root", {"expires_at": "2099-01-01T00:00:00+00:00"}),
]


def key_row(key_id: str, status: str, expires: float | None) -> tuple[Any, ...]:
    digest = key_id.encode().ljust(32, b"\0")
    now = time.time()
    return (key_id, digest, "kg", "ab12", key_id, key_id, "", status, '["default"]',
            OWNER, "alice", ADMIN, "root", now, now, None, expires, None, "{}")


KEY_INSERT = (
    "INSERT INTO keys (id, digest, prefix, last4, name, name_key, description, status, groups, "
    "owner_id, owner_username, created_by_id, created_by_username, created_at, updated_at, "
    "last_used_at, expires_at, webhook_url, metadata) VALUES ({})"
)
AUDIT_INSERT = (
    "INSERT INTO audit (at, action, target_type, target_id, actor_user_id, actor_username, "
    "changes) VALUES ({})"
)


async def write_sqlite_v1(path: Path) -> None:
    async with aiosqlite.connect(path) as db:
        for stmt in SQLITE_V1:
            await db.execute(stmt)
        await db.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        await db.execute("INSERT INTO schema_version VALUES (1, ?)", (time.time(),))
        for key in KEYS:
            await db.execute(KEY_INSERT.format(",".join("?" * 19)), key_row(*key))
        for target, actor_id, actor_name, changes in AUDIT:
            await db.execute(
                AUDIT_INSERT.format(",".join("?" * 7)),
                (time.time(), "key.update", "key", target, actor_id, actor_name,
                 orjson.dumps(changes).decode()),
            )
        await db.commit()


async def write_pg_v1(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        async with conn.transaction():
            for stmt in PG_V1:
                await conn.execute(stmt)
            await conn.execute(
                "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute("INSERT INTO schema_version (version) VALUES (1)")
            placeholders = ", ".join(f"${i}" for i in range(1, 20))
            for key in KEYS:
                row = list(key_row(*key))
                for i in (13, 14, 16):  # timestamptz columns
                    row[i] = None if row[i] is None else datetime.fromtimestamp(row[i], UTC)
                await conn.execute(
                    KEY_INSERT.format(placeholders).replace("$9,", "$9::jsonb,")
                    .replace("$19)", "$19::jsonb)"),
                    *row,
                )
            for target, actor_id, actor_name, changes in AUDIT:
                await conn.execute(
                    AUDIT_INSERT.format("now(), $1, $2, $3, $4, $5, $6::jsonb"),
                    "key.update", "key", target, actor_id, actor_name,
                    orjson.dumps(changes).decode(),
                )
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A version-1 store, opened (and so migrated) by this keygate."""
    store: Store
    if request.param == "postgres":
        url = str(request.getfixturevalue("pg_database"))
        await reset_schema(url)
        await write_pg_v1(url)
        store = PostgresStore(url, pool_size=2)
    else:
        await write_sqlite_v1(tmp_path / "v1.db")
        store = SQLiteStore(tmp_path / "v1.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def test_upgrade_both_stores_have_the_same_versions_in_order() -> None:
    versions = [version for version, _ in SQLITE_SCHEMA.steps]
    assert versions == list(range(1, len(versions) + 1))
    assert [version for version, _ in PG_SCHEMA.steps] == versions


async def test_upgrade_applies_only_the_new_version(upgraded: Store) -> None:
    # Every version after the first, once (a v1 store meets each later step).
    later = tuple(version for version, _ in SQLITE_SCHEMA.steps if version > 1)
    assert upgraded.applied_on_open == later
    assert await upgraded.migrate() == []


@pytest.mark.parametrize(
    ("key_id", "disabled_by", "by_admin"),
    [
        ("ownerdisabld", {"id": OWNER, "username": "alice"}, False),
        ("admindisabld", {"id": ADMIN, "username": "root"}, True),
        ("clidisabled0", {"id": None, "username": "cli:ops"}, True),
        # Nobody on record: the block is kept as an admin's.
        ("untrackeddis", None, True),
        ("reenabled000", None, False),
    ],
)
async def test_upgrade_disabled_keys_learn_who_disabled_them(
    upgraded: Store, key_id: str, disabled_by: dict[str, Any] | None, by_admin: bool
) -> None:
    key = await upgraded.get_key(key_id)
    assert key is not None
    assert key.as_json()["disabled_by"] == disabled_by
    assert key.disabled_by_admin is by_admin


@pytest.mark.parametrize(
    ("key_id", "by_admin"),
    [
        ("ownerexpires", False),
        ("adminexpires", True),
        ("adminthenown", True),  # the latest change to the expiry decides
        ("untrackedexp", True),
        ("reenabled000", False),  # no expiry, nothing to cap
    ],
)
async def test_upgrade_expiry_learns_who_set_it(
    upgraded: Store, key_id: str, by_admin: bool
) -> None:
    key = await upgraded.get_key(key_id)
    assert key is not None
    assert key.expires_by_admin is by_admin


async def test_upgrade_keeps_every_key_and_its_fields(upgraded: Store) -> None:
    for key_id, status, expires in KEYS:
        key = await upgraded.get_key(key_id)
        assert key is not None
        assert (key.status, key.owner_username, key.groups) == (status, "alice", ("default",))
        assert (key.expires_at is None) == (expires is None)
        # No limits until an admin sets some (docs/reference.md#rate-limits).
        assert (key.rate_limits, key.quota, key.allowed_ips) == ((), None, ())
        assert (key.quota_used, key.quota_window) == (0, None)


async def test_upgrade_keys_are_not_imported_and_imports_work(upgraded: Store) -> None:
    """Version 5: every key from before is a keygate key; imported ones can follow."""
    key = await upgraded.get_key("ownerdisabld")
    assert key is not None and not key.imported
    assert (await upgraded.imported_keys(0)).digests == []
    record = replace(key, id="importedkey0", name="legacy", prefix="", last4="1234", imported=True)
    digest = hashlib.sha256(b"legacy-client-key-1234").digest()
    outcome = await upgraded.import_keys([(record, digest)], audit=lambda k: AuditEntry(
        "key.import", "key", k.id))
    assert outcome.imported == ["importedkey0"]
    assert (await upgraded.imported_keys(0)).digests == [digest]
    found = await upgraded.auth_lookup(digest)
    assert found is not None and found.key_id == "importedkey0"
