"""Profile keygate under wrk load with py-spy and print the top frames.

    python bench/profile.py [--scenario valid|bad-checksum|flood-random-id|
                                        flood-foreign|features-on] [--seconds 15]
    python bench/profile.py --scenario zipf-1m|miss-1m --workdir /tmp/kb

Starts the origin (nginx) and one keygate worker like ``run.py`` does, drives
it with 50 wrk connections, samples it with ``py-spy record`` (pip install
py-spy) and prints the frames with the most samples: "self" (the frame was
running) and "total" (the frame was on the stack), in percent of all samples.
``features-on`` profiles ``keygate-features`` (run.py's every-feature system)
and also prints each feature's share: the samples with one of its frames on
the stack (``FEATURES``; add a feature's markers there when it lands).
``zipf-1m`` and ``miss-1m`` profile ``keygate-1m`` (1,000,000 keys, a
100,000-entry cache) under run.py's Zipf load or with every request a miss
(the 200,000 sampled keys in turn); ``--workdir`` keeps and reuses the big
store, as run.py's does (the two can share one).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/profile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs, seed, systems, wrkrun

# A feature's share of the event loop: samples with a frame matching one of
# its markers (a function name or a file path in py-spy's frame text).
FEATURES = {
    "access log": ("accesslog.py",),
    "rate limit + quota (local)": ("gateway/limits/",),
    "IP allowlist": ("check_address", "clientip.py"),
    "identity headers": ("identity_headers", "upstream_header_pairs"),
    "metrics": ("gateway/metrics/",),
    "webhooks": ("gateway/webhooks/", "sqldelivery.py"),
}


def feature_shares(collapsed: Path) -> list[str]:
    """Each feature's share of the event-loop thread's samples, in percent."""
    hits: collections.Counter[str] = collections.Counter()
    main = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not stack.startswith("_run_module_as_main"):
            continue
        n = int(count)
        main += n
        for name, markers in FEATURES.items():
            if any(m in stack for m in markers):
                hits[name] += n
    return [f"{100 * hits[name] / max(1, main):5.1f}%  {name}" for name in FEATURES]


def top_frames(collapsed: Path, limit: int) -> tuple[list[str], list[str], float]:
    """(self, total, other-threads %) from py-spy's collapsed ("raw") output.

    Only the event-loop (main) thread counts: aiosqlite's worker threads spend
    their life blocked in ``queue.get``, which py-spy does not see as idle.
    """
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    main = other = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if not frames[0].startswith("_run_module_as_main"):
            other += n
            continue
        main += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n

    def fmt(counter: collections.Counter[str]) -> list[str]:
        return [f"{100 * n / main:5.1f}%  {f}" for f, n in counter.most_common(limit)]

    return fmt(own), fmt(total), 100 * other / max(1, main + other)


# The big-store scenarios and their wrk shapes: Zipf ranks, or the sample in
# turn (200,000 keys cycled through a 100,000-entry LRU: every request misses).
LARGE = {"zipf-1m": "zipf", "miss-1m": "cycle"}
KEYS, SAMPLE = 1_000_000, 200_000


def large_store(work: Path) -> tuple[Path, Path]:
    """run.py's 1,000,000-key store and its sample's tokens, seeded unless kept."""
    db, sample = work / "large.db", work / "zipf_sample.txt"
    done = work / f"large-{KEYS}-{SAMPLE}.done"
    if done.exists():
        seed.reset_last_used(db)
    else:
        print(f"bench: seeding {KEYS:,} keys (about a minute)", file=sys.stderr)
        seed.write_lines(sample, seed.seed_large(db, KEYS, SAMPLE))
        done.touch()
    return db, sample


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/profile.py", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--scenario", default="valid",
                   choices=["valid", "bad-checksum", "flood-random-id", "flood-foreign",
                            "features-on", "zipf-1m", "miss-1m"])
    p.add_argument("--seconds", type=float, default=15.0, help="sampling time")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--top", type=int, default=25, help="frames to print")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    p.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    p.add_argument("--workdir", type=Path,
                   help="keep the stores here and reuse a big one (zipf-1m, miss-1m)")
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        print("bench: py-spy not found; pip install py-spy", file=sys.stderr)
        return 2
    sut, load = procs.cpu_sets(0, 1)
    started: list[procs.Proc] = []
    with tempfile.TemporaryDirectory(prefix="keygate-profile-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o711)
        large = None
        try:
            small = seed.seed_small(work / "small.db")
            arg, shape = small.token, "static"
            if args.scenario == "bad-checksum":
                arg = seed.bad_checksum(small.token)
            elif args.scenario == "flood-random-id":
                arg = str(seed.write_lines(work / "flood.txt", seed.random_tokens(200_000)))
                shape = "cycle"
            elif args.scenario == "flood-foreign":  # on a store with imported keys
                arg = str(seed.write_lines(work / "flood.txt", seed.foreign_tokens(200_000)))
                shape = "cycle"
                seed.add_imported(small.small_db, seed.foreign_tokens(systems.IMPORTED_KEYS))
            elif args.scenario in LARGE:
                large, sample = large_store(work)
                arg, shape = str(sample), LARGE[args.scenario]
            lay = systems.Layout(work, procs.free_port(), work / "none", work / "none",
                                 small.small_db, large, sut, load, 120.0)
            started.append(systems.start_origin(lay).proc)
            name = {"features-on": "keygate-features"}.get(args.scenario, "keygate")
            if large is not None:
                name = "keygate-1m"
            keygate = systems.start(name, lay)
            started.append(keygate.proc)
            scripts = wrkrun.write_scripts(work)
            seconds = args.seconds + 3
            w = wrkrun.start(wrkrun.Load(shape, arg, args.connections), keygate.url, seconds,
                             scripts, work / "wrk.log", load)
            started.append(w)
            raw = work / "profile.txt"
            subprocess.run(
                [pyspy, "record", "--pid", str(keygate.proc.pid), "--duration",
                 f"{args.seconds:.0f}", "--rate", str(args.rate), "--format", "raw",
                 "--output", str(raw)],
                capture_output=True, timeout=args.seconds + 60, check=True,
            )
            result = wrkrun.finish(w, seconds)
            own, total, other = top_frames(raw, args.top)
            shares = feature_shares(raw) if args.scenario == "features-on" else []
            if args.raw:
                shutil.copyfile(raw, args.raw)
        finally:
            for proc in reversed(started):
                procs.stop(proc)
    print(f"keygate, {args.scenario}, {args.connections} connections: {result.rps:,.0f} req/s "
          f"while sampled, p99 {result.p99_ms:.1f} ms\n")
    print(f"event-loop thread only ({other:.0f}% of samples were in other threads, mostly "
          "aiosqlite workers waiting on their queue)\n")
    if shares:
        print("features (samples with one of its frames on the stack):", *shares, "", sep="\n")
    print("self (frame running):", *own, "", "total (frame on the stack):", *total, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
