"""Stores and token files for the bench, written before any server starts.

The small store gets its keys through the real service layer. The large store
(1,000,000 keys) gets the first admin and one key the same way, then the rest
as rows bulk-inserted into ``keys`` in one transaction: going through the
service one key at a time would take far longer and is not what is measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from keygate.config.settings import AuthSettings
from keygate.gateway.auth import keyformat
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store.sqlite.store import SQLiteStore

PREFIX = AuthSettings().key_prefix


@dataclass(frozen=True)
class Seeded:
    token: str  # the valid key of the small store ("bench-1")
    key_id: str
    small_db: Path


async def _admin_and_key(db: Path, name: str) -> tuple[str, str, str]:
    """(owner id, token, key id): first admin, then one key in group ``default``."""
    store = SQLiteStore(db)
    await store.open()
    try:
        ctx = ServiceContext(store, AuthSettings())
        issued = await create_first_admin(ctx)
        owner = issued.key.owner_id
        actor = Actor(owner, "admin", None, ("admin",))
        key = await Services.build(ctx).keys.create(actor, {"groups": ["default"], "name": name})
        return owner, key.token, key.key.id
    finally:
        await store.close()


def remove_db(db: Path) -> None:
    """Delete a SQLite database with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def seed_small(db: Path) -> Seeded:
    remove_db(db)
    _, token, key_id = asyncio.run(_admin_and_key(db, "bench-1"))
    return Seeded(token, key_id, db)


def copy_db(src: Path, dst: Path) -> Path:
    # The store is closed and checkpointed, so the main file is the whole database.
    remove_db(dst)
    shutil.copyfile(src, dst)
    return dst


def random_tokens(n: int, key_id: str | None = None) -> list[str]:
    """``n`` well-formed tokens with valid checksums (an attacker can compute CRC32).

    Random key ids unless ``key_id`` is given (a real id with wrong secrets).
    Bench-only generator: ``os.urandom`` bytes mapped onto the alphabets with a
    modulo (slightly biased, fast); real keys come from :mod:`gateway.keyformat`.
    """
    id_map = bytes.maketrans(
        bytes(range(256)),
        bytes(ord(keyformat.KEY_ID_ALPHABET[b % 36]) for b in range(256)),
    )
    secret_map = bytes.maketrans(
        bytes(range(256)), bytes(ord(keyformat.BASE62[b % 62]) for b in range(256))
    )
    ids = os.urandom(n * keyformat.KEY_ID_LEN).translate(id_map).decode()
    secrets_ = os.urandom(n * keyformat.SECRET_LEN).translate(secret_map).decode()
    out = []
    for i in range(n):
        kid = key_id or ids[i * 12 : i * 12 + 12]
        out.append(keyformat.make_token(PREFIX, kid, secrets_[i * 32 : i * 32 + 32]))
    return out


# Visible ASCII but the space (what an imported token may hold), without the
# quote and backslash so a token file line is one header value as it stands.
FOREIGN = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "\"\\")


def foreign_tokens(n: int) -> list[str]:
    """``n`` random tokens of other systems' shapes (16-48 visible ASCII
    characters): not keygate-formatted, so only an imported key could match."""
    raw = os.urandom(n * 49)
    out = []
    for i in range(n):
        chunk = raw[i * 49 : i * 49 + 49]
        out.append("".join(FOREIGN[b % len(FOREIGN)] for b in chunk[1 : 17 + chunk[0] % 33]))
    return out


def add_imported(db: Path, tokens: list[str]) -> None:
    """Bulk-insert imported keys (docs/reference.md#imported-keys) into a closed
    store, owned by its first admin, in one transaction."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        owner = conn.execute("SELECT id FROM users WHERE username = 'admin'").fetchone()[0]
        now = time.time()
        groups = orjson.dumps(["default"]).decode()
        alphabet = keyformat.KEY_ID_ALPHABET
        ids = os.urandom(len(tokens) * keyformat.KEY_ID_LEN)

        def rows():  # type: ignore[no-untyped-def]
            for i, token in enumerate(tokens):
                kid = "".join(alphabet[b % 36] for b in ids[i * 12 : i * 12 + 12])
                name = f"imported-{i:07d}"
                yield (kid, hashlib.sha256(token.encode()).digest(), "", token[-4:], name,
                       name, "active", groups, owner, "admin", owner, "admin", now, now, 1)

        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1048576")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR IGNORE INTO keys (id, digest, prefix, last4, name, name_key, status, "
            "groups, owner_id, owner_username, created_by_id, created_by_username, "
            "created_at, updated_at, imported) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def bad_checksum(token: str) -> str:
    """``token`` with its checksum changed: refused before cache or store."""
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


def seed_large(db: Path, total: int, sample: int) -> list[str]:
    """A store with ``total`` keys; return the tokens of ``sample`` of them."""
    remove_db(db)
    owner, first, _ = asyncio.run(_admin_and_key(db, "bench-0"))
    wanted = total - 2  # the admin key and bench-0 exist already
    tokens: list[str] = []
    seen: set[str] = set()
    while len(tokens) < wanted:
        for token in random_tokens(min(wanted - len(tokens), 100_000)):
            kid = token[len(PREFIX) + 1 : len(PREFIX) + 13]
            if kid not in seen:  # key ids are UNIQUE in the store
                seen.add(kid)
                tokens.append(token)
    now = time.time()
    groups = orjson.dumps(["default"]).decode()

    def rows():  # type: ignore[no-untyped-def]
        for i, token in enumerate(tokens):
            kid = token[len(PREFIX) + 1 : len(PREFIX) + 13]
            name = f"bulk-{i:07d}"
            yield (kid, hashlib.sha256(token.encode()).digest(), PREFIX, token[-4:], name,
                   name, "active", groups, owner, "admin", owner, "admin", now, now)

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1048576")  # 1 GiB: random digests churn the index
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO keys (id, digest, prefix, last4, name, name_key, status, groups, "
            "owner_id, owner_username, created_by_id, created_by_username, created_at, "
            "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    step = max(1, len(tokens) // sample)
    return [first, *tokens[::step]][:sample]


def reset_last_used(db: Path) -> None:
    """Forget last-used stamps of an earlier run, so :func:`keys_used` counts this one."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("UPDATE keys SET last_used_at = NULL WHERE last_used_at IS NOT NULL")
    finally:
        conn.close()


def keys_used(db: Path) -> int:
    """Keys with a last-used stamp: distinct keys verified, an upper bound on cache entries."""
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT count(*) FROM keys WHERE last_used_at IS NOT NULL"
        (count,) = conn.execute(sql).fetchone()
        return int(count)
    finally:
        conn.close()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def write_digests(path: Path, tokens: list[str]) -> Path:
    """sha256 hex digests, one a line: what the bare forwarder accepts."""
    return write_lines(path, [hashlib.sha256(t.encode()).hexdigest() for t in tokens])


# A rate limit no bench load reaches: what counting costs, never a 429.
GENEROUS = [{"name": "generous", "limit": 1_000_000_000, "window": 1, "burst": None}]


def webhooks_everywhere(db: Path, url: str) -> None:
    """Give every key of a (closed) small store a webhook_url and a signing secret."""
    from keygate.gateway.webhooks.signing import new_secret

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET webhook_url = ?, webhook_secret = ?", (url, new_secret()))


def generous_limit(db: Path) -> None:
    """Give every key of a (closed) small store the :data:`GENEROUS` rate limit."""
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET rate_limits = ?", (orjson.dumps(GENEROUS).decode(),))


# A quota no bench load reaches, and an allowlist the bench's client matches.
GENEROUS_QUOTA = {"limit": 10**15, "period": "month"}
LOOPBACK = ["127.0.0.0/8"]


def every_feature(db: Path) -> None:
    """Every key of a (closed) small store with every per-key feature on: a
    generous rate limit and quota (local backend) and an allowlist that matches.
    Identity headers go upstream on every keyed route; the access log is on by
    default; metrics and webhooks come from ``systems`` (keygate-features)."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE keys SET rate_limits = ?, quota = ?, allowed_ips = ?",
            (orjson.dumps(GENEROUS).decode(), orjson.dumps(GENEROUS_QUOTA).decode(),
             orjson.dumps(LOOPBACK).decode()),
        )


# --- PostgreSQL: databases of the bench's own ----------------------------------
async def server_sql(server: str, sql: str) -> None:
    """Run one statement (CREATE or DROP DATABASE) on the server's ``postgres`` database."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(f"{server}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(server: str, name: str) -> str:
    """A new, empty database ``name`` on ``server``; its URL."""
    await server_sql(server, f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


async def drop_database(server: str, name: str) -> None:
    await server_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _seed_postgres(server: str, name: str, large_db: Path) -> None:
    import asyncpg

    from keygate.gateway.store.postgres.store import PostgresStore

    url = await create_database(server, name)
    store = PostgresStore(url, pool_size=2)
    await store.open()  # migrated
    try:
        ctx = ServiceContext(store, AuthSettings())
        issued = await create_first_admin(ctx)
        owner = issued.key.owner_id
    finally:
        await store.close()
    # Every key of the SQLite store but its admin's, under this store's admin:
    # the zipf sample's tokens work on both.
    with sqlite3.connect(large_db) as lite:
        rows = lite.execute(
            "SELECT id, digest, prefix, last4, name, name_key, status, groups FROM keys "
            "WHERE name != (SELECT k.name FROM keys k JOIN users u ON u.id = k.owner_id "
            "WHERE u.username = 'admin' ORDER BY k.created_at LIMIT 1)"
        ).fetchall()
    now = datetime.now(UTC)
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "keys",
            records=[
                (*row, owner, "admin", owner, "admin", now, now) for row in rows
            ],
            columns=["id", "digest", "prefix", "last4", "name", "name_key", "status", "groups",
                     "owner_id", "owner_username", "created_by_id", "created_by_username",
                     "created_at", "updated_at"],
        )
        await conn.execute("ANALYZE keys")
    finally:
        await conn.close()


def seed_postgres(server: str, large_db: Path) -> str:
    """A new database on the PostgreSQL at ``server`` holding ``large_db``'s keys; its URL."""
    name = f"kg_bench_{os.getpid()}_{int(time.time())}"
    asyncio.run(_seed_postgres(server.rstrip("/"), name, large_db))
    return f"{server.rstrip('/')}/{name}"


def drop_postgres(url: str) -> None:
    server, _, name = url.rpartition("/")
    asyncio.run(drop_database(server, name))
