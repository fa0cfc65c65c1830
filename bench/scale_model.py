"""Past one machine, in a model: store writes, change fan-out and cache memory
for 1, 10 and 100 nodes serving a million keys under a Zipf load.

    python bench/scale_model.py [--keys 1000000] [--rate 10000] [--seconds 120]
                                [--resolution 60] [--changes 1] [--nodes 1,10,100]

Measured here, with the real code, at 1 and 2 nodes (``--seconds`` of
simulated traffic, so the run takes seconds, not minutes):

- **last-used row writes**: 1 and 2 ``UsageRecorder`` s (one per node) on one
  SQLite store of ``--keys`` keys, each fed ``--rate`` requests a second of
  Zipf(s=1) key ids, flushed every ``auth.last_used_flush_interval`` (1 s);
  rows written are counted by SQLite itself (``total_changes``). Once with
  ``auth.last_used_resolution = 0`` (every flush writes: keygate before the
  resolution) and once with ``--resolution``;
- **cache memory**: bytes per verified key in ``KeyCache`` (its entry, indexes
  and digest set) and per key id in the ``KeyIdSet``, by ``tracemalloc``.

Then the model: the expected number of distinct keys in n Zipf draws,
D(n) = Σ_k 1 − (1 − p_k)^n, checked against the measurements above, gives
the writes for any node count — without a resolution, each node writes every
key it saw in each flush interval, N · D(rate · interval) a second; with it,
a key's row is written once per resolution window however many nodes use it,
Σ_k λ_k / (1 + λ_k · resolution) for a key used λ_k = N · rate · p_k times a
second (its first use a resolution after its last write) — and the cache's entries,
min(cache_size, D(rate · cache_ttl)). Change fan-out is arithmetic on
PostgreSQL's design: every admin change is one NOTIFY delivered to each node,
which reads the change feed once; a node polls the feed every
``store.change_poll_interval`` (0.2 s) only while its LISTEN is down (before
this release: always). Prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import math
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):  # `python bench/scale_model.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keygate.config.settings import AuthSettings, StoreSettings
from keygate.gateway.auth.cache import KeyCache, principal_from
from keygate.gateway.auth.keyids import KeyIdSet
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.store.records import AuthRecord
from keygate.gateway.store.sqlite.store import SQLiteStore

AUTH = AuthSettings()
FLUSH = AUTH.last_used_flush_interval
POLL = StoreSettings().change_poll_interval


# --- Zipf --------------------------------------------------------------------------
def zipf_weights(keys: int) -> list[float]:
    h = sum(1.0 / k for k in range(1, keys + 1))
    return [1.0 / (k * h) for k in range(1, keys + 1)]


def distinct(weights: list[float], draws: float) -> float:
    """Expected distinct keys among ``draws`` Zipf draws."""
    if draws <= 0:
        return 0.0
    return sum(-math.expm1(draws * math.log1p(-p)) for p in weights)


class ZipfDraws:
    def __init__(self, weights: list[float], seed: int) -> None:
        self._cum = list(itertools.accumulate(weights))
        self._rng = random.Random(seed)

    def ranks(self, n: int) -> list[int]:
        cum, rnd, top = self._cum, self._rng.random, len(self._cum) - 1
        return [min(bisect.bisect_left(cum, rnd()), top) for _ in range(n)]


# --- measured: last-used row writes ---------------------------------------------------
async def seed_ids(db: Path, keys: int) -> list[str]:
    """A store whose ``keys`` table holds ``keys`` rows (only what a last-used write needs)."""
    import sqlite3

    store = SQLiteStore(db, loop_reads=False)
    await store.open()  # the schema
    await store.close()
    ids = [f"{i:012d}" for i in range(keys)]
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(
            "INSERT INTO users (id, username, role, groups, status, created_at, updated_at) "
            "VALUES ('u', 'u', 'admin', '[]', 'active', 0, 0)"
        )
        conn.executemany(
            "INSERT INTO keys (id, digest, prefix, last4, name, name_key, status, groups, "
            "owner_id, owner_username, created_at, updated_at) "
            "VALUES (?, randomblob(32), 'kg', 'abcd', ?, ?, 'active', '[]', 'u', 'u', 0, 0)",
            ((i, i, i) for i in ids),
        )
    return ids


async def row_writes(
    db: Path, ids: list[str], weights: list[float], nodes: int, rate: int, seconds: int,
    resolution: float,
) -> tuple[float, float]:
    """(rows written a second, stamps sent a second) for ``nodes`` recorders on one
    store, in the steady state: counted after a first resolution of traffic."""
    store = SQLiteStore(db, loop_reads=False)
    await store.open()
    try:
        await store._tx(lambda c: c.execute("UPDATE keys SET last_used_at = NULL"))
        writer = store._writer
        assert writer is not None
        recorders = [UsageRecorder(store, FLUSH, resolution) for _ in range(nodes)]
        draws = [ZipfDraws(weights, seed) for seed in range(nodes)]
        sent = 0
        before = writer.total_changes
        t0 = time.time()
        warmup = math.ceil(resolution)
        for second in range(warmup + seconds):
            if second == warmup:
                sent, before = 0, writer.total_changes
            for node, (recorder, zipf) in enumerate(zip(recorders, draws, strict=True)):
                now = t0 + second + node * 0.001  # nodes' clocks are never equal
                for rank in zipf.ranks(rate):
                    recorder.touch(ids[rank], now)
                pending, skipped = recorder.pending, recorder.skipped
                await recorder.flush()
                sent += pending - (recorder.skipped - skipped)
        return (writer.total_changes - before) / seconds, sent / seconds
    finally:
        await store.close()


# --- measured: cache memory ----------------------------------------------------------
def cache_bytes(entries: int) -> tuple[float, float]:
    """(bytes per cached key, bytes per key id in the id set)."""
    records = [
        AuthRecord(
            key_id=f"k{i:011d}", key_name=f"bulk-{i:07d}", key_status="active",
            key_groups=("default",), expires_at=None, owner_id=f"owner{i % 1000:05d}",
            owner_username=f"user{i % 1000}", owner_role="member", owner_status="active",
            owner_groups=("default",),
        )
        for i in range(entries)
    ]
    digests = [random.randbytes(32) for _ in range(entries)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cache = KeyCache(entries, AUTH.cache_ttl, AUTH.negative_cache_ttl)
    for record, digest in zip(records, digests, strict=True):
        cache.put(digest, principal_from(record, AUTH.cache_ttl), cache.generation)
        cache.put_key_digests(record.key_id, frozenset([digest]), cache.key_generation)
    per_entry = (tracemalloc.get_traced_memory()[0] - base) / entries
    base = tracemalloc.get_traced_memory()[0]
    id_set = KeyIdSet(f"{i:012d}" for i in range(entries))
    per_id = (tracemalloc.get_traced_memory()[0] - base) / entries
    tracemalloc.stop()
    del cache, id_set
    return per_entry, per_id


# --- the model -------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=10_000, help="requests a second per node")
    p.add_argument("--seconds", type=int, default=120, help="simulated seconds per measurement")
    p.add_argument("--resolution", type=float, default=AUTH.last_used_resolution)
    p.add_argument("--changes", type=float, default=1.0, help="admin changes a second")
    p.add_argument("--nodes", default="1,10,100")
    p.add_argument("--cache-sample", type=int, default=50_000, help="entries measured")
    args = p.parse_args()
    nodes = [int(n) for n in args.nodes.split(",")]
    weights = zipf_weights(args.keys)

    print(f"measuring: {args.keys:,} keys, {args.rate:,} req/s a node, Zipf(s=1), "
          f"{args.seconds} simulated s", file=sys.stderr)
    measured: dict[tuple[int, float], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kg-scale-") as tmp:
        db = Path(tmp) / "scale.db"
        ids = asyncio.run(seed_ids(db, args.keys))
        for n in (1, 2):
            for res in (0.0, args.resolution):
                measured[(n, res)] = asyncio.run(
                    row_writes(db, ids, weights, n, args.rate, args.seconds, res)
                )
    per_entry, per_id = cache_bytes(args.cache_sample)

    def writes_before(n: int, rate: float = args.rate) -> float:
        return n * distinct(weights, rate * FLUSH) / FLUSH

    def writes_after(n: int, rate: float = args.rate) -> float:
        # A key used λ times a second is rewritten on its first use at least a
        # resolution ρ after its last write: every ρ + 1/λ seconds on average.
        total, rho = n * rate, args.resolution
        return sum(total * p / (1 + total * p * rho) for p in weights)

    out = ["### Measured here (1 and 2 nodes), and the model's figure for the same", ""]
    out.append("| nodes | resolution s | row writes/s measured | model | stamps sent/s measured |")
    out.append("|---:|---:|---:|---:|---:|")
    for (n, res), (rows, sent) in sorted(measured.items()):
        model = writes_after(n) if res else writes_before(n)
        out.append(f"| {n} | {res:g} | {rows:,.0f} | {model:,.0f} | {sent:,.0f} |")
    out += ["", "Steady state: counted after a first resolution of traffic.", "",
            f"Per-node inputs: {args.rate:,} req/s; cache {per_entry:,.0f} bytes per "
            f"verified key, {per_id:,.0f} bytes per key id; flush every {FLUSH:g} s; "
            f"change poll every {POLL:g} s; {args.changes:g} admin change(s) a second.", ""]

    out.append("### Model: 1,000,000 keys under Zipf, per node as measured above")
    out.append("")
    out.append("Each node serves the rate above (so the total grows with the nodes), and, in "
               "the two columns marked *fixed total*, the same total load as one node spread "
               "over all of them. Writes are `last_used_at` row writes a second, before "
               f"(resolution 0) and with `auth.last_used_resolution = {args.resolution:g}`; "
               f"their ceiling with it is keys / resolution = {args.keys / args.resolution:,.0f}.")
    out.append("")
    out.append("| nodes | req/s | writes/s before | with resolution | fixed total: before | "
               "fixed total: with resolution | NOTIFY deliveries/s | "
               "change-feed reads/s (polling always, as before) | "
               "cache entries a node | cache MiB a node |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    entries = min(AUTH.cache_size, distinct(weights, args.rate * AUTH.cache_ttl))
    mib = (entries * per_entry + args.keys * per_id) / 2**20
    for n in nodes:
        notify = args.changes * n
        reads = f"{notify:,.0f} ({notify + n / POLL:,.0f})"
        out.append(
            f"| {n} | {n * args.rate:,} | {writes_before(n):,.0f} | {writes_after(n):,.0f} | "
            f"{writes_before(n, args.rate / n):,.0f} | {writes_after(n, args.rate / n):,.0f} | "
            f"{notify:,.0f} | {reads} | {entries:,.0f} | {mib:,.0f} |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
