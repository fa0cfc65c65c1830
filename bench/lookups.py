"""Cache-miss lookups in µs: the ways a miss can be read, measured in one run.

    python bench/lookups.py [--keys 1000000] [--db FILE] [--batch 50] [--rounds 200]
                            [--cold] [--pg-url postgresql://postgres@127.0.0.1:5432]
                            [--pg-keys 1000000]

A store of ``--keys`` keys (seeded like ``bench/run.py``'s zipf-1m store, or
reused from ``--db``), ``--rounds`` batches of ``--batch`` random key ids,
each batch looked up concurrently through the real store
(``Store.auth_lookup_key``): with SQLite's loop reads, with the reader thread
(``store.sqlite_loop_reads = false``), and — with ``--pg-url`` — PostgreSQL
(``= ANY($1)``, its keys bulk-copied into a scratch database first). The raw
statements are timed as well: one ``sqlite3`` point lookup per key on the
loop, the same batched. ``--cold`` drops the database file from the page cache
(``posix_fadvise(DONTNEED)``) before each SQLite measurement.

Prints µs per lookup, ms per batch (how long one batch holds the loop, for
the loop reads) and each row's ratio to the thread reader of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seed import PREFIX, create_database, drop_database, seed_large, write_lines  # noqa: E402
from keygate.gateway.store.lookups import KeyLookups  # noqa: E402
from keygate.gateway.store.rows import AUTH_COLUMNS  # noqa: E402
from keygate.gateway.store.sqlite.loopreads import MMAP_BYTES  # noqa: E402
from keygate.gateway.store.sqlite.store import SQLiteStore  # noqa: E402

ONE = (
    f"SELECT {AUTH_COLUMNS}, r.until, k.digest, r.digest FROM keys k "
    "LEFT JOIN users u ON u.id = k.owner_id "
    "LEFT JOIN retired_digests r ON r.key_id = k.id WHERE k.id = ?"
)
MANY = ONE.replace("= ?", "IN (SELECT value FROM json_each(?))")


def drop_cache(db: Path) -> None:
    fd = os.open(db, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def key_ids(tokens: list[str]) -> list[str]:
    return [t[len(PREFIX) + 1 : len(PREFIX) + 13] for t in tokens]


Row = tuple[str, float, float]  # name, µs per lookup, ms per batch


async def through_store(
    name: str, lookup: Callable[[str], Awaitable[object]], batches: list[list[str]]
) -> Row:
    per_batch = []
    for batch in batches:
        started = time.perf_counter()
        await asyncio.gather(*(lookup(k) for k in batch))
        per_batch.append(time.perf_counter() - started)
    n = sum(len(b) for b in batches)
    per_batch.sort()
    return name, sum(per_batch) / n * 1e6, per_batch[len(per_batch) // 2] * 1e3


def raw_sqlite(db: Path, batches: list[list[str]], batched: bool, cold: bool) -> Row:
    import orjson

    if cold:
        drop_cache(db)
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    per_batch = []
    for batch in batches:
        started = time.perf_counter()
        if batched:
            conn.execute(MANY, (orjson.dumps(batch).decode(),)).fetchall()
        else:
            for k in batch:
                conn.execute(ONE, (k,)).fetchall()
        per_batch.append(time.perf_counter() - started)
    conn.close()
    n = sum(len(b) for b in batches)
    per_batch.sort()
    name = "sqlite3 on the loop, " + ("one json_each batch" if batched else "one query a key")
    return name, sum(per_batch) / n * 1e6, per_batch[len(per_batch) // 2] * 1e3


def _lookup(store: SQLiteStore) -> Callable[[str], Awaitable[object]]:
    return lambda key_id: store.auth_lookup_key(key_id, b"")


async def sqlite_rows(db: Path, batches: list[list[str]], cold: bool) -> list[Row]:
    out = []
    for loop_reads in (False, True):
        if cold:
            drop_cache(db)
        store = SQLiteStore(db, loop_reads=loop_reads)
        await store.open()
        try:
            name = "SQLiteStore, " + ("loop reads" if loop_reads else "reader thread")
            out.append(await through_store(name, _lookup(store), batches))
            lookups: KeyLookups | None = store.key_lookups
            assert lookups is not None and lookups.queries == len(batches), "one batch a round"
        finally:
            await store.close()
    return out


async def postgres_rows(url: str, tokens: list[str], batches: list[list[str]]) -> list[Row]:
    import secrets

    import asyncpg  # type: ignore[import-untyped]

    from keygate.gateway.store.postgres.store import PostgresStore

    server = url.rstrip("/")
    name = f"kg_bench_lookups_{secrets.token_hex(4)}"
    scoped = await create_database(server, name)
    store = PostgresStore(scoped, pool_size=10)
    await store.open()
    try:
        conn = await asyncpg.connect(scoped)
        try:
            owner = await conn.fetchval("SELECT id FROM users LIMIT 1")
            if owner is None:
                owner = "bench-owner-0"
                await conn.execute(
                    "INSERT INTO users (id, username, role, status, groups, created_at, "
                    "updated_at) VALUES ($1, 'bench', 'admin', 'active', '[]', now(), now())",
                    owner,
                )
            now = time.time()
            import datetime as dt

            stamp = dt.datetime.fromtimestamp(now, dt.UTC)
            records = (
                (kid, hashlib.sha256(t.encode()).digest(), PREFIX, t[-4:], f"b-{i}", f"b-{i}",
                 "active", '["default"]', owner, "bench", owner, "bench", stamp, stamp)
                for i, (t, kid) in enumerate(zip(tokens, key_ids(tokens), strict=True))
            )
            await conn.copy_records_to_table(
                "keys",
                records=records,
                columns=[
                    "id", "digest", "prefix", "last4", "name", "name_key", "status", "groups",
                    "owner_id", "owner_username", "created_by_id", "created_by_username",
                    "created_at", "updated_at",
                ],
            )
            await conn.execute("ANALYZE keys")
        finally:
            await conn.close()
        row = await through_store(
            "PostgresStore, = ANY($1) batch", lambda k: store.auth_lookup_key(k, b""), batches
        )
    finally:
        await store.close()
        await drop_database(server, name)
    return [row]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--db", type=Path, help="reuse (or create) this store")
    p.add_argument("--batch", type=int, default=50, help="misses per loop pass")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--cold", action="store_true", help="drop the file from the page cache first")
    p.add_argument(
        "--pg-url",
        help="also measure PostgreSQL: the server's URL, e.g. postgresql://postgres@127.0.0.1:5432"
        " (a scratch database is made and dropped)",
    )
    p.add_argument("--pg-keys", type=int, default=1_000_000)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="kg-lookups-") as tmp:
        db = args.db or Path(tmp) / "large.db"
        tokens_file = db.with_suffix(".tokens")
        if not db.exists() or not tokens_file.exists():
            print(f"seeding {args.keys:,} keys into {db} ...", file=sys.stderr)
            write_lines(tokens_file, seed_large(db, args.keys, args.keys))
        tokens = tokens_file.read_text().split()
        with sqlite3.connect(db) as conn:
            (total,) = conn.execute("SELECT count(*) FROM keys").fetchone()
        ids = key_ids(tokens)
        rng = random.Random(1)
        batches = [rng.sample(ids, args.batch) for _ in range(args.rounds)]

        rows = asyncio.run(sqlite_rows(db, batches, args.cold))
        rows.append(raw_sqlite(db, batches, batched=False, cold=args.cold))
        rows.append(raw_sqlite(db, batches, batched=True, cold=args.cold))
        if args.pg_url:
            pg_tokens = tokens[: args.pg_keys]
            pg_ids = set(key_ids(pg_tokens))
            pg_batches = [[k for k in b if k in pg_ids] or b[:1] for b in batches]
            rows += asyncio.run(postgres_rows(args.pg_url, pg_tokens, pg_batches))

    reference = rows[0][1]
    pages = "cold" if args.cold else "warm"
    print(
        f"{total:,} keys (ids drawn from {len(ids):,}), {args.rounds} batches of "
        f"{args.batch} random key ids, {pages} pages"
    )
    print()
    print("| how | µs per lookup | ms per batch (median) | ÷ reader thread |")
    print("|---|---:|---:|---:|")
    for name, us, ms in rows:
        print(f"| {name} | {us:.1f} | {ms:.2f} | {us / reference:.2f}× |")


if __name__ == "__main__":
    main()
