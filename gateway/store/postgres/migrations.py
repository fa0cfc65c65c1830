"""The PostgreSQL schema, version by version (run by ``gateway/store/migrate.py``).

Append new versions; never edit an applied one. The same tables and meaning
as the SQLite schema (``sqlite/migrations.py``), in native types:
``timestamptz`` stamps, ``jsonb`` group lists, rules and metadata, ``bytea``
digests.
"""

from __future__ import annotations

from keygate.gateway.store.migrate import Schema, builtin_group_rows

# One advisory lock key for "migrating keygate": nodes starting together queue
# on it, and the first one applies every pending version.
MIGRATION_LOCK = 0x6B67_6D69_6772  # "kgmigr"


_SEED = (
    "INSERT INTO groups (name, description, rules, builtin, created_at, updated_at) "
    "VALUES ({name}, {description}, {rules}::jsonb, true, now(), now()) "
    "ON CONFLICT (name) DO NOTHING"
)


PG_V1 = [
    """CREATE TABLE users (
        id text PRIMARY KEY,
        username text NOT NULL UNIQUE,
        role text NOT NULL CHECK (role IN ('admin', 'member')),
        groups jsonb NOT NULL DEFAULT '[]',
        status text NOT NULL CHECK (status IN ('active', 'disabled')),
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
    )""",
    """CREATE TABLE groups (
        name text PRIMARY KEY,
        description text NOT NULL DEFAULT '',
        rules jsonb NOT NULL DEFAULT '[]',
        builtin boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
    )""",
    # seq orders keys newest first and is the pagination cursor: an identity
    # never hands out a value twice, so a cursor never repeats a record.
    """CREATE TABLE keys (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        digest bytea NOT NULL,
        prefix text NOT NULL,
        last4 text NOT NULL,
        name text NOT NULL,
        name_key text NOT NULL,
        description text NOT NULL DEFAULT '',
        status text NOT NULL CHECK (status IN ('active', 'disabled', 'revoked')),
        groups jsonb NOT NULL DEFAULT '[]',
        owner_id text NOT NULL,
        owner_username text NOT NULL,
        created_by_id text,
        created_by_username text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        last_used_at timestamptz,
        expires_at timestamptz,
        webhook_url text,
        metadata jsonb NOT NULL DEFAULT '{}'
    )""",
    "CREATE UNIQUE INDEX keys_digest ON keys (digest)",
    # name_key is the case-folded name: per-owner, case-insensitive uniqueness.
    "CREATE UNIQUE INDEX keys_owner_name ON keys (owner_id, name_key)",
    "CREATE INDEX keys_owner_status ON keys (owner_id, status)",
    "CREATE INDEX keys_groups ON keys USING gin (groups jsonb_path_ops)",
    "CREATE INDEX users_groups ON users USING gin (groups jsonb_path_ops)",
    """CREATE TABLE retired_digests (
        digest bytea PRIMARY KEY,
        key_id text NOT NULL,
        until timestamptz NOT NULL
    )""",
    "CREATE INDEX retired_digests_key ON retired_digests (key_id)",
    """CREATE TABLE audit (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        action text NOT NULL,
        target_type text NOT NULL,
        target_id text NOT NULL,
        actor_user_id text,
        actor_username text,
        actor_key_id text,
        client_addr text,
        changes jsonb NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE changes (
        seq bigserial PRIMARY KEY,
        kind text NOT NULL,
        ref text NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX changes_at ON changes (at)",
    *builtin_group_rows(_SEED),
]

# Blocks (docs/admin-api.md): who disabled a key, and whether an admin did or
# set its expiry. Keys from before this version are judged by the audit trail,
# as in the SQLite migration (sqlite/migrations.py, version 2): the latest change that
# disabled the key (or set its expiry) decides; anyone but the owner (the CLI
# included) counts as an admin, and so does a trail that says nothing.
PG_V2 = [
    "ALTER TABLE keys ADD COLUMN disabled_by_id text, "
    "ADD COLUMN disabled_by_username text, "
    "ADD COLUMN disabled_by_admin boolean NOT NULL DEFAULT false, "
    "ADD COLUMN expires_by_admin boolean NOT NULL DEFAULT false",
    """UPDATE keys SET disabled_by_id = d.actor_user_id, disabled_by_username = d.actor_username
    FROM (SELECT DISTINCT ON (target_id) target_id, actor_user_id, actor_username FROM audit
          WHERE target_type = 'key' AND changes->>'status' = 'disabled'
          ORDER BY target_id, id DESC) d
    WHERE keys.status = 'disabled' AND d.target_id = keys.id""",
    "UPDATE keys SET disabled_by_admin = true WHERE status = 'disabled' "
    "AND disabled_by_id IS DISTINCT FROM owner_id",
    """UPDATE keys SET expires_by_admin = true WHERE expires_at IS NOT NULL
    AND (SELECT a.actor_user_id FROM audit a WHERE a.target_type = 'key'
         AND a.target_id = keys.id AND a.changes ? 'expires_at'
         ORDER BY a.id DESC LIMIT 1) IS DISTINCT FROM owner_id""",
]

# Rate limits, quotas and IP allowlists, as in the SQLite migration
# (sqlite/migrations.py, version 3).
PG_V3 = [
    "ALTER TABLE keys ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '[]', "
    "ADD COLUMN quota jsonb, "
    "ADD COLUMN allowed_ips jsonb NOT NULL DEFAULT '[]', "
    "ADD COLUMN quota_used bigint NOT NULL DEFAULT 0, "
    "ADD COLUMN quota_window text",
]

# Key avatars and the audit target index, as in the SQLite migration
# (sqlite/migrations.py, version 4).
PG_V4 = [
    """CREATE TABLE key_avatars (
        key_id text PRIMARY KEY REFERENCES keys (id) ON DELETE CASCADE,
        png bytea NOT NULL,
        etag text NOT NULL,
        updated_at timestamptz NOT NULL
    )""",
    "CREATE INDEX audit_target ON audit (target_type, target_id, id)",
]

# Imported keys, as in the SQLite migration (sqlite/migrations.py, version 5).
PG_V5 = [
    "ALTER TABLE keys ADD COLUMN imported boolean NOT NULL DEFAULT false",
    "CREATE INDEX keys_imported ON keys (seq) WHERE imported",
]

# Webhooks: secrets, the outbox, deliveries and markers, as in the SQLite
# migration (sqlite/migrations.py, version 6). No lease: nodes claim
# deliveries with FOR UPDATE SKIP LOCKED.
PG_V6 = [
    "ALTER TABLE keys ADD COLUMN webhook_secret text, "
    "ADD COLUMN webhook_secret_prev text, "
    "ADD COLUMN webhook_secret_prev_until timestamptz",
    """CREATE TABLE webhook_events (
        seq bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        key_id text NOT NULL,
        type text NOT NULL,
        body text NOT NULL,
        url text,
        secrets text,
        fanned boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL
    )""",
    "CREATE INDEX webhook_events_fanned ON webhook_events (fanned, seq)",
    """CREATE TABLE webhook_deliveries (
        seq bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        event_seq bigint NOT NULL REFERENCES webhook_events (seq) ON DELETE CASCADE,
        key_id text NOT NULL,
        target text NOT NULL CHECK (target IN ('key', 'endpoint')),
        url text NOT NULL,
        status text NOT NULL
            CHECK (status IN ('pending', 'delivered', 'failed', 'abandoned')),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz,
        claimed_by text,
        claimed_until timestamptz,
        last_attempt_at timestamptz,
        last_status integer,
        last_error text,
        last_response text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
    )""",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
    "CREATE INDEX webhook_deliveries_key ON webhook_deliveries (key_id, event_seq)",
    # Expiry notices look for keys by when they expire.
    "CREATE INDEX keys_expires ON keys (expires_at)",
    "CREATE TABLE webhook_gone (url text PRIMARY KEY, at timestamptz NOT NULL)",
    """CREATE TABLE webhook_expiry_sent (
        key_id text NOT NULL,
        kind text NOT NULL,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (key_id, kind, expires_at)
    )""",
    """CREATE TABLE webhook_traffic (
        key_id text NOT NULL,
        type text NOT NULL,
        last_at timestamptz NOT NULL,
        PRIMARY KEY (key_id, type)
    )""",
    "CREATE TABLE webhook_leases (name text PRIMARY KEY, holder text NOT NULL, "
    "until timestamptz NOT NULL)",
]

# Rolled-away tokens kept for good, as in the SQLite migration
# (sqlite/migrations.py, version 7).
PG_V7 = [
    """CREATE TABLE import_tombstones (
        digest bytea PRIMARY KEY,
        key_id text NOT NULL,
        retired_at timestamptz NOT NULL
    )""",
]

PG_SCHEMA = Schema(
    steps=[
        (1, PG_V1),
        (2, PG_V2),
        (3, PG_V3),
        (4, PG_V4),
        (5, PG_V5),
        (6, PG_V6),
        (7, PG_V7),
    ],
    version_table="CREATE TABLE IF NOT EXISTS schema_version "
    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    record_version="INSERT INTO schema_version (version) VALUES ($1)",
)
