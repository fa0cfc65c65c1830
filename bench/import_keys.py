"""Imported keys at scale (docs/reference.md#imported-keys): how long a bulk import
takes on each store, and what a million imported keys cost a starting gateway.

    python bench/import_keys.py                       # 100,000 keys, both stores; 1M start-up
    python bench/import_keys.py --keys 20000 --startup-keys 100000 --no-postgres

1. ``keygate keys import FILE --format csv`` of ``--keys`` keys, end to end as a
   user runs it (a process: reading, checking, batches of one transaction),
   into a new SQLite file and into a new PostgreSQL database on ``--pg``
   (created and dropped here). Targets: 30 s each.
2. ``keygate serve`` on a store holding ``--startup-keys`` imported keys (bulk
   inserted as rows, like bench/seed.py's large store): spawn → first answer of
   /_keygate/health, and the process's RSS then. Targets: 5 s, 400 MB. A random
   token of another format is then refused (401) and an imported one admitted
   (the route's upstream is down: 502, past verification).

Everything runs in a temporary directory, removed at the end unless
``--workdir`` is given; every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import procs, seed

ROOT = Path(__file__).resolve().parent.parent


def env_for(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["KEYGATE_STORE_URL"] = url
    return env


def keygate(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keygate", *args],
        env=env_for(url), cwd=cwd, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def timed_import(url: str, source: Path, work: Path) -> float:
    init = keygate("init", url=url, cwd=work)
    if init.returncode != 0:
        raise RuntimeError(init.stderr)
    t0 = time.monotonic()
    done = keygate("keys", "import", str(source), "--format", "csv", "--owner", "admin",
                   "--group", "default", url=url, cwd=work)  # fmt: skip
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    print(f"  {done.stdout.splitlines()[0]}")
    return seconds


def startup(work: Path, count: int) -> tuple[float, float, int, int]:
    """(seconds to answer, RSS MiB, status for an imported key, for a random token)."""
    db = work / "startup.db"
    url = f"sqlite:///{db}"
    init = keygate("init", url=url, cwd=work)
    if init.returncode != 0:
        raise RuntimeError(init.stderr)
    tokens = seed.foreign_tokens(count)
    t0 = time.monotonic()
    seed.add_imported(db, tokens)
    print(f"  seeded {count:,} imported keys in {time.monotonic() - t0:.0f} s")
    port, dead = procs.free_port(), procs.free_port()
    conf = work / "startup.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\naccess_log = false\n\n'
        f'[store]\nurl = "{url}"\n\n'
        f'[[routes]]\nname = "default"\nprefix = "/"\nupstream = "http://127.0.0.1:{dead}"\n'
    )
    proc = procs.spawn("keygate", [sys.executable, "-m", "keygate", "serve", "--config",
                                   str(conf)], work / "startup.log", cpus=None,
                       env=env_for(url), cwd=ROOT)  # fmt: skip
    try:
        ready = procs.wait_http(proc, port, "/_keygate/health", 120.0)
        rss = procs.rss_mib(proc.pid)
        return ready, rss, status(port, tokens[count // 2]), status(port, "x" * 8 + tokens[0])
    finally:
        procs.stop(proc)


def status(port: int, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"X-API-Key": token})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000, help="keys per import (default 100,000)")
    p.add_argument("--startup-keys", type=int, default=1_000_000,
                   help="imported keys in the start-up store (default 1,000,000; 0: skip)")
    p.add_argument("--pg", default=os.environ.get("KEYGATE_TEST_PG",
                                                  "postgresql://postgres@127.0.0.1:5432"),
                   help="a PostgreSQL server (trust auth) to make a database on")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--workdir", type=Path, help="keep files here")  # fmt: skip
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = args.workdir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kg-import-")))
        source = work / "keys.csv"
        tokens: set[str] = set()
        while len(tokens) < args.keys:  # plain CSV cells: no comma or quote
            tokens.update(t for t in seed.foreign_tokens(args.keys) if not set(t) & set(',"'))
        chosen = sorted(tokens)[: args.keys]
        source.write_text("key,name\n" + "".join(
            f"{t},client-{i % 5000}\n" for i, t in enumerate(chosen)
        ))  # fmt: skip
        keys = len(chosen)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        results = []
        print(f"import of {keys:,} keys into SQLite:")
        results.append(("SQLite", timed_import(f"sqlite:///{work}/import.db", source, work)))
        if not args.no_postgres:
            name = f"kg_bench_{secrets.token_hex(4)}"
            asyncio.run(seed.create_database(args.pg, name))
            try:
                print(f"import of {keys:,} keys into PostgreSQL:")
                results.append(("PostgreSQL", timed_import(f"{args.pg}/{name}", source, work)))
            finally:
                asyncio.run(seed.drop_database(args.pg, name))
        print()
        print("| what | result | target |")
        print("|---|---:|---:|")
        for store, seconds in results:
            print(f"| import {keys:,} keys, {store} | {seconds:.1f} s | 30 s |")
        if args.startup_keys:
            ready, rss, imported, foreign = startup(work, args.startup_keys)
            print(f"| start-up, {args.startup_keys:,} imported keys | {ready:.2f} s | 5 s |")
            print(f"| RSS after start-up | {rss:.0f} MiB | 400 MB |")
            print(f"| an imported key / a random token | {imported} / {foreign} | 502 / 401 |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
