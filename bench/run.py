"""Benchmark keygate against nginx, a bare aiohttp forwarder and the origin itself.

    python bench/run.py                 # 3 interleaved rounds x 5 s per run (~12 min)
    python bench/run.py --quick         # 1 round x 2 s: a smoke run
    python bench/run.py --scenarios valid-c50,zipf-1m --rounds 5

Installs nothing. Needs wrk and nginx (apt-get install wrk nginx-light).
Every server is started here, on 127.0.0.1 and free ports, pinned: the system
under test on --sut-cpu, wrk and the origin (an nginx instance answering
``return 200 "hello"``, and a 1 MiB file on /big) on --load-cpu. Everything
started is stopped by pid on exit, Ctrl-C or error. Prints a markdown table
(req/s median and min-max over rounds, p50/p99 latency, CPU microseconds per
request of the system under test from /proc/<pid>/stat summed over its process
tree, memory, and keygate's ratios to the references measured in the same run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import nginx, procs, report, scenarios, seed, systems, wrkrun

INSTALL_HINT = "install them with: apt-get install wrk nginx-light"
LARGE = frozenset({"keygate-1m", "keygate-1m-thread", "keygate-1m-pg"})
# Refusal floods: each keygate's store lookups over its runs are reported
# (issue 18's goal is none: memory refuses them).
FLOODS = frozenset({"bad-checksum", "flood-random-id", "flood-wrong-secret", "flood-foreign"})
MISS_SERIES = 'keygate_key_cache_lookups_total{result="miss"}'


def store_lookups(url: str) -> int | None:
    """keygate's verification lookups so far (its metrics, from loopback), or None."""
    try:
        with urllib.request.urlopen(f"{url}/_keygate/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(MISS_SERIES):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__,
        epilog="scenarios: valid-c1, valid-c50, bad-checksum, flood-random-id, "
        "flood-wrong-secret, flood-foreign, features-on, valid-c25, mixed, zipf-1m, miss-1m, "
        "post-c50, stream-1mib, tls-c50, forward-auth-c50. "
        "See bench/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--scenarios", default="", help="comma list (default: all)")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s runs (CI smoke)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up s per system (0: none)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument(
        "--systems", default="", help="comma list: run only these systems (and the subject)"
    )
    p.add_argument("--keys", type=int, default=1_000_000, help="keys in the zipf-1m store")
    p.add_argument("--sample", type=int, default=200_000, help="keys wrk picks from (Zipf)")
    p.add_argument("--sut-cpu", type=int, default=0, help="core of the system under test")
    p.add_argument("--load-cpu", type=int, default=1, help="core of wrk and the origin")
    p.add_argument("--workdir", type=Path, help="keep stores, configs and logs here")
    p.add_argument("--output", type=Path, help="also write the table to this file")
    p.add_argument(
        "--pg-url",
        help="PostgreSQL server for keygate-1m-pg, e.g. postgresql://postgres@127.0.0.1:5432 "
        "(a database of the bench's own is made and dropped); without it that system is left out",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if args.rounds < 1 or not 0.5 <= args.duration <= 600:
        p.error("--rounds must be >= 1 and --duration between 0.5 and 600 seconds")
    return args


def preflight() -> str | None:
    missing = [tool for tool in (wrkrun.WRK, nginx.NGINX) if not os.access(tool, os.X_OK)]
    if missing:
        return f"missing {', '.join(missing)}; {INSTALL_HINT}"
    check = subprocess.run(
        [sys.executable, "-m", "keygate", "serve", "--help"], cwd=systems.ROOT,
        capture_output=True, timeout=60, check=False,
    )
    if check.returncode != 0:
        return "`python -m keygate serve --help` failed:\n" + check.stderr.decode()[-2000:]
    return None


def _only(sc: scenarios.Scenario, only: set[str]) -> scenarios.Scenario:
    """``sc`` with only the systems of ``--systems`` (and its subject); all without it."""
    if not only:
        return sc
    kept = tuple(n for n in sc.systems if n in only or n == sc.subject)
    return dataclasses.replace(sc, systems=kept)


def code_version() -> str:
    """Commit and the newest source change: other people may edit the tree meanwhile."""
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=systems.ROOT, capture_output=True,
        text=True, timeout=30, check=False,
    ).stdout.strip() or "unknown commit"
    sources = [p for d in ("gateway", "config", "admin") for p in (systems.ROOT / d).rglob("*.py")]
    newest = max((p.stat().st_mtime for p in sources), default=0.0)
    stamp = datetime.datetime.fromtimestamp(newest).astimezone()
    return f"commit {rev}, newest source file modified {stamp:%Y-%m-%d %H:%M %Z}"


def machine_header(args: argparse.Namespace, load_before: float, code: str) -> list[str]:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nginx_v = subprocess.run([nginx.NGINX, "-v"], capture_output=True, text=True, check=False)
    import aiohttp

    busy = []
    if load_before > 0.5 * (os.cpu_count() or 1):
        busy = [
            f"- **note**: the machine was busy (load average {load_before:.1f} at the start): "
            "other processes shared both cores, so absolute numbers are low and noisy; "
            "compare rows of the same run (interleaved) rather than with other runs"
        ]
    return [
        f"## keygate bench — {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "",
        f"- machine: nproc {os.cpu_count()}, {model}, Linux {platform.release()}; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
        f"- software: Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"{nginx_v.stderr.strip().removeprefix('nginx version: ')}, wrk 4 (1 thread)",
        f"- keygate: {code} (taken when the servers started)",
        f"- runs: {args.rounds} interleaved round(s) x {args.duration:g} s per run; "
        f"system under test pinned to core {args.sut_cpu}, wrk + origin to core "
        f"{args.load_cpu} (keygate-w2: both cores)",
        "- origin: its own nginx instance, `return 200 \"hello\"` (and a 1 MiB file on /big)",
        "- CPU µs/req: utime+stime of the system's process tree / requests "
        "(for `direct` that is the origin itself; for `mixed`, over both loads)",
        *busy,
    ]


class Bench:
    def __init__(
        self, args: argparse.Namespace, work: Path, cpus: tuple[set[int] | None, set[int] | None]
    ) -> None:
        self.args = args
        self.work = work
        self.cpus = cpus  # (system under test, wrk + origin)
        self.started: list[procs.Proc] = []  # every process we started, for the finally
        self.systems: dict[str, systems.System] = {}
        self.samples: list[report.Sample] = []
        self.notes: list[str] = []
        # (scenario, system) -> store lookups over its measured runs, or None.
        self.lookups: dict[tuple[str, str], int | None] = {}
        self.pg_db: str | None = None  # keygate-1m-pg's database, dropped at the end

    def prepare(self, wanted: set[str], floods: int) -> scenarios.Tokens:
        say("seeding the small store")
        small = seed.seed_small(self.work / "small.db")
        flood_ids = seed.write_lines(self.work / "flood_ids.txt", seed.random_tokens(floods))
        flood_secrets = seed.write_lines(
            self.work / "flood_secrets.txt", seed.random_tokens(floods, small.key_id)
        )
        flood_foreign = seed.write_lines(self.work / "flood_foreign.txt",
                                         seed.foreign_tokens(floods))
        sample: list[str] = []
        large = self.work / "large.db"
        zipf = self.work / "zipf_sample.txt"
        done = self.work / f"large-{self.args.keys}-{self.args.sample}.done"
        large_wanted = bool(wanted & LARGE)
        if large_wanted and done.exists():  # a kept --workdir: reuse the big store
            say(f"reusing the {self.args.keys:,}-key store in {self.work}")
            sample = zipf.read_text().split()
            seed.reset_last_used(large)
        elif large_wanted:
            say(f"seeding {self.args.keys:,} keys (bulk insert, about a minute)")
            t0 = time.monotonic()
            done.unlink(missing_ok=True)
            sample = seed.seed_large(large, self.args.keys, self.args.sample)
            seed.write_lines(zipf, sample)
            done.touch()
            say(f"seeded in {time.monotonic() - t0:.0f} s")
        else:
            # Not zipf_sample.txt: a kept --workdir's big store keeps its sample.
            zipf = seed.write_lines(self.work / "zipf_unused.txt", [small.token])
        accepted = [small.token, *sample]
        nginx.write_map_file(self.work / "keys.map", accepted)
        seed.write_digests(self.work / "keys.sha256", accepted)
        large_pg = None
        if "keygate-1m-pg" in wanted:
            say(f"copying the {self.args.keys:,} keys into PostgreSQL")
            t0 = time.monotonic()
            large_pg = self.pg_db = seed.seed_postgres(self.args.pg_url, large)
            say(f"copied in {time.monotonic() - t0:.0f} s")
        self.layout = systems.Layout(
            work=self.work, origin_port=procs.free_port(), map_file=self.work / "keys.map",
            digests_file=self.work / "keys.sha256", small_db=small.small_db,
            large_db=large if sample else None, sut_cpus=self.cpus[0], load_cpus=self.cpus[1],
            ready_timeout=120.0,
            tls=systems.write_tls_files(self.work) if wanted & systems.TLS_SYSTEMS else None,
            large_pg=large_pg,
        )
        return scenarios.Tokens(small.token, seed.bad_checksum(small.token), flood_ids,
                                flood_secrets, flood_foreign, zipf)

    def start(self, wanted: set[str]) -> None:
        origin = systems.start_origin(self.layout)
        self.started.append(origin.proc)
        if "keygate-redis" in wanted:
            redis, port = systems.start_redis(self.layout)
            self.started.append(redis)
            self.layout = dataclasses.replace(self.layout, redis_port=port)
        self.systems["direct"] = origin
        for name in [n for n in systems.DESCRIPTIONS if n in wanted and n != "direct"]:
            say(f"starting {name}")
            system = systems.start(name, self.layout)  # raises if it does not come up
            self.started.append(system.proc)
            self.started.extend(system.extra)
            self.systems[name] = system

    def run_once(self, sc: scenarios.Scenario, name: str, rnd: int, seconds: float) -> None:
        system = self.systems[name]
        counted = sc.name in FLOODS and name.startswith("keygate") and rnd >= 0
        before = store_lookups(system.url) if counted else None
        cpu0 = procs.cpu_seconds(system.proc.pid)
        wrks = []
        for i, load in enumerate(sc.loads):
            log = self.work / f"wrk-{sc.name}-{name}-{rnd}-{i}.log"
            wrks.append(wrkrun.start(load, system.url, seconds, self.scripts, log, self.cpus[1]))
            self.started.append(wrks[-1])
        results = tuple(wrkrun.finish(w, seconds) for w in wrks)
        cpu = procs.cpu_seconds(system.proc.pid) - cpu0
        if rnd < 0:
            return  # warm-up
        if counted:
            after = store_lookups(system.url)
            key, total = (sc.name, name), self.lookups.get((sc.name, name), 0)
            self.lookups[key] = (
                None if before is None or after is None or total is None
                else total + after - before
            )
        sample = report.Sample(sc.name, name, rnd, results, cpu,
                               procs.rss_mib(system.proc.pid))
        self.samples.append(sample)
        rps = " + ".join(f"{r.rps:,.0f}" for r in results)
        say(f"round {rnd + 1}: {sc.name} x {name}: {rps} req/s, "
            f"{sample.cpu_us_per_request:,.0f} µs CPU/req")

    def note_lookups(self) -> None:
        for (scenario, name), n in self.lookups.items():
            seen = "unknown (metrics not read)" if n is None else f"{n:,}"
            self.notes.append(
                f"- {scenario}: {name} asked the store {seen} time(s) over its measured runs "
                "(`keygate_key_cache_lookups_total{result=\"miss\"}`)"
            )

    def note_large_store(self) -> None:
        """After keygate-1m stopped (and flushed): how many distinct keys it verified."""
        system = self.systems.get("keygate-1m")
        if system is None or self.layout.large_db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            used = seed.keys_used(self.layout.large_db)
            self.notes.append(
                f"- keygate-1m: start-up {system.proc.ready_after or 0:.2f} s with "
                f"{self.args.keys:,} keys; {used:,} distinct keys were verified over all its "
                "runs (an upper bound on its cache entries; cache_size 100,000)."
            )

    def run(self, chosen: list[scenarios.Scenario]) -> None:
        self.scripts = wrkrun.write_scripts(self.work)
        warm = {n for sc in chosen for n in sc.systems}
        for sc in chosen:  # one short warm-up per system, with the load it will see first
            for name in [n for n in sc.systems if n in warm and self.args.warmup > 0]:
                warm.discard(name)
                self.run_once(sc, name, -1, self.args.warmup)
        for rnd in range(self.args.rounds):
            for sc in chosen:
                k = rnd % len(sc.systems)  # rotate the order: no system always goes first
                for name in (*sc.systems[k:], *sc.systems[:k]):
                    self.run_once(sc, name, rnd, self.args.duration)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    # The plan (scenario and system names) does not depend on the tokens seeded later.
    plan = scenarios.build(
        scenarios.Tokens("", "", Path(), Path(), Path(), Path()), args.connections
    )
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(names) - {s.name for s in plan}
    if unknown:
        print(f"bench: unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    plan = [s for s in plan if not names or s.name in names]
    only = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not args.pg_url:
        only_pg = {"keygate-1m-pg"}
        plan = [dataclasses.replace(s, systems=tuple(n for n in s.systems if n not in only_pg))
                for s in plan]
    plan = [_only(s, only) for s in plan]
    wanted = {n for s in plan for n in s.systems}
    signal.signal(signal.SIGTERM, _interrupt)
    load_before = os.getloadavg()[0]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)  # nginx workers (user nobody when run as root) must reach their files
    bench = Bench(args, work.resolve(), procs.cpu_sets(args.sut_cpu, args.load_cpu))
    if bench.cpus[0] is None:
        say("cannot pin to the requested cores; running unpinned")
    try:
        # Flood files only when used: 200,000 tokens each take a second to make.
        floods = 200_000 if any(s.loads[-1].shape == "cycle" for s in plan) else 1
        tokens = bench.prepare(wanted, floods)
        built = {s.name: s for s in scenarios.build(tokens, args.connections)}
        chosen = [dataclasses.replace(built[p.name], systems=p.systems) for p in plan]
        code = code_version()
        bench.start(wanted)
        bench.run(chosen)
    except KeyboardInterrupt:
        say("interrupted; stopping everything started")
        return 130
    except RuntimeError as exc:  # a server or wrk failed: its log tail is in the message
        say(f"failed: {exc}")
        return 1
    finally:
        for proc in reversed(bench.started):
            procs.stop(proc)  # keygate flushes last-used stamps on SIGTERM
        bench.note_large_store()
        bench.note_lookups()
        if bench.pg_db is not None:
            with contextlib.suppress(Exception):
                seed.drop_postgres(bench.pg_db)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    startup = {n: s.proc.ready_after or 0.0 for n, s in bench.systems.items()}
    header = machine_header(args, load_before, code)
    notes = [*bench.notes, *report.goal_notes(bench.samples, args.connections)]
    table = report.render(chosen, bench.samples, startup, header, notes)
    print(table)
    if args.output:
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
