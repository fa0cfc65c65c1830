"""The SQLite schema, version by version (run by ``gateway/store/migrate.py``).

Append new versions; never edit an applied one. PostgreSQL's steps
(``postgres/migrations.py``) have the same versions with the same meaning.
"""

from __future__ import annotations

from keygate.gateway.store.migrate import Schema, builtin_group_rows

# Epoch seconds in SQL, so the stamp is taken when the migration runs.
_NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"


# Constants of this module and of records.py: nothing user-supplied.
_SEED = (
    "INSERT OR IGNORE INTO groups (name, description, rules, builtin, created_at, "  # noqa: S608
    f"updated_at) VALUES ({{name}}, {{description}}, {{rules}}, 1, {_NOW_SQL}, {_NOW_SQL})"
)


SQLITE_V1 = [
    """CREATE TABLE users (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'member')),
        groups TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        rules TEXT NOT NULL DEFAULT '[]',
        builtin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    # seq orders keys newest first and is the pagination cursor: AUTOINCREMENT
    # never reuses a value, so a cursor never skips or repeats a record.
    """CREATE TABLE keys (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        digest BLOB NOT NULL,
        prefix TEXT NOT NULL,
        last4 TEXT NOT NULL,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'revoked')),
        groups TEXT NOT NULL DEFAULT '[]',
        owner_id TEXT NOT NULL,
        owner_username TEXT NOT NULL,
        created_by_id TEXT,
        created_by_username TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_used_at REAL,
        expires_at REAL,
        webhook_url TEXT,
        metadata TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE UNIQUE INDEX keys_digest ON keys (digest)",
    # name_key is the case-folded name: per-owner, case-insensitive uniqueness.
    "CREATE UNIQUE INDEX keys_owner_name ON keys (owner_id, name_key)",
    "CREATE INDEX keys_owner_status ON keys (owner_id, status)",
    """CREATE TABLE retired_digests (
        digest BLOB PRIMARY KEY,
        key_id TEXT NOT NULL,
        until REAL NOT NULL
    )""",
    "CREATE INDEX retired_digests_key ON retired_digests (key_id)",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        target_type TEXT NOT NULL,
        target_id TEXT NOT NULL,
        actor_user_id TEXT,
        actor_username TEXT,
        actor_key_id TEXT,
        client_addr TEXT,
        changes TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    *builtin_group_rows(_SEED),
]

# Blocks (docs/admin-api.md): who disabled a key, and whether an admin did or
# set its expiry. Keys from before this version are judged by the audit trail,
# which has recorded every change since version 1: the latest change that
# disabled the key (or set its expiry) decides; a change by anyone but the owner
# (the CLI included) counts as an admin's, and so does a disabled key or an
# expiry the trail says nothing about, so no block is lifted by the upgrade.
SQLITE_V2 = [
    "ALTER TABLE keys ADD COLUMN disabled_by_id TEXT",
    "ALTER TABLE keys ADD COLUMN disabled_by_username TEXT",
    "ALTER TABLE keys ADD COLUMN disabled_by_admin INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE keys ADD COLUMN expires_by_admin INTEGER NOT NULL DEFAULT 0",
    """UPDATE keys SET (disabled_by_id, disabled_by_username) = (
        SELECT a.actor_user_id, a.actor_username FROM audit a
        WHERE a.target_type = 'key' AND a.target_id = keys.id
        AND json_extract(a.changes, '$.status') = 'disabled' ORDER BY a.id DESC LIMIT 1)
    WHERE status = 'disabled'""",
    "UPDATE keys SET disabled_by_admin = 1 WHERE status = 'disabled' "
    "AND (disabled_by_id IS NULL OR disabled_by_id != owner_id)",
    """UPDATE keys SET expires_by_admin = 1 WHERE expires_at IS NOT NULL
    AND coalesce((SELECT coalesce(a.actor_user_id, '') FROM audit a
                  WHERE a.target_type = 'key' AND a.target_id = keys.id
                  AND json_type(a.changes, '$.expires_at') IS NOT NULL
                  ORDER BY a.id DESC LIMIT 1), '') != owner_id""",
]

# Rate limits, quotas and IP allowlists (docs/reference.md#rate-limits-quotas-and-ip-allowlists):
# JSON documents, and the quota's count in the window it names ("2026-12-01" for
# a day, "2026-12" for a month), added to by every process's flushes.
SQLITE_V3 = [
    "ALTER TABLE keys ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE keys ADD COLUMN quota TEXT",
    "ALTER TABLE keys ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE keys ADD COLUMN quota_used INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE keys ADD COLUMN quota_window TEXT",
]

# Key avatars (docs/admin-api.md#avatars): the re-encoded PNG only, never the
# uploaded bytes; a table of its own so the keys table keeps its columns. Deleting
# a key deletes its avatar (the store does it; the foreign key too). And an
# index for the audit trail's target filter (docs/admin-api.md#audit-admin-only).
SQLITE_V4 = [
    """CREATE TABLE key_avatars (
        key_id TEXT PRIMARY KEY REFERENCES keys (id) ON DELETE CASCADE,
        png BLOB NOT NULL,
        etag TEXT NOT NULL,
        updated_at REAL NOT NULL
    )""",
    # The console's key details and audit filters read one target's records.
    "CREATE INDEX audit_target ON audit (target_type, target_id, id)",
]

# Imported keys (docs/reference.md#imported-keys): tokens of any format, found
# by the digest of the whole token. Each process holds their digests in memory
# (read in seq order, and by seq span when a change notice announces a batch),
# so the partial index holds only them: a store with none pays nothing.
SQLITE_V5 = [
    "ALTER TABLE keys ADD COLUMN imported INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX keys_imported ON keys (seq) WHERE imported = 1",
]

# Webhooks (docs/webhooks.md): each key's signing secrets (the previous one
# kept beside the new until its overlap ends); the outbox, one event per key
# change written in the change's transaction (``body`` is the exact JSON sent,
# ``url`` the key's webhook_url then, ``secrets`` only when the key's row is
# gone); one delivery per event and receiver, with its last attempt; the
# receivers that answered 410; markers that make expiry notices once-only and
# space traffic notices; and the lease that elects SQLite's one deliverer.
SQLITE_V6 = [
    "ALTER TABLE keys ADD COLUMN webhook_secret TEXT",
    "ALTER TABLE keys ADD COLUMN webhook_secret_prev TEXT",
    "ALTER TABLE keys ADD COLUMN webhook_secret_prev_until REAL",
    """CREATE TABLE webhook_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        key_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL,
        url TEXT,
        secrets TEXT,
        fanned INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX webhook_events_fanned ON webhook_events (fanned, seq)",
    """CREATE TABLE webhook_deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        event_seq INTEGER NOT NULL REFERENCES webhook_events (seq) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        target TEXT NOT NULL CHECK (target IN ('key', 'endpoint')),
        url TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'delivered', 'failed', 'abandoned')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        claimed_by TEXT,
        claimed_until REAL,
        last_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT,
        last_response TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
    "CREATE INDEX webhook_deliveries_key ON webhook_deliveries (key_id, event_seq)",
    # Expiry notices look for keys by when they expire.
    "CREATE INDEX keys_expires ON keys (expires_at)",
    "CREATE TABLE webhook_gone (url TEXT PRIMARY KEY, at REAL NOT NULL)",
    """CREATE TABLE webhook_expiry_sent (
        key_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (key_id, kind, expires_at)
    )""",
    """CREATE TABLE webhook_traffic (
        key_id TEXT NOT NULL,
        type TEXT NOT NULL,
        last_at REAL NOT NULL,
        PRIMARY KEY (key_id, type)
    )""",
    "CREATE TABLE webhook_leases "
    "(name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL)",
]

# Tokens rolled away (docs/reference.md#imported-keys): a roll without a grace
# period keeps no retired digest, and a later roll or a revoke drops the one it
# kept, so an import run again would bring a leaked legacy token back. Each
# rolled-away digest is recorded here for good; neither a later roll nor
# deleting the key removes it.
SQLITE_V7 = [
    """CREATE TABLE import_tombstones (
        digest BLOB PRIMARY KEY,
        key_id TEXT NOT NULL,
        retired_at REAL NOT NULL
    )""",
]

SQLITE_SCHEMA = Schema(
    steps=[
        (1, SQLITE_V1),
        (2, SQLITE_V2),
        (3, SQLITE_V3),
        (4, SQLITE_V4),
        (5, SQLITE_V5),
        (6, SQLITE_V6),
        (7, SQLITE_V7),
    ],
    version_table="CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
    record_version=(
        f"INSERT INTO schema_version (version, applied_at) VALUES ($1, {_NOW_SQL})"  # noqa: S608
    ),
)
