"""Scratch: user vs kernel CPU per request of each system at 50 connections.

    python bench/profile_split.py [--seconds 5] [--systems hello,bare,keygate]
    python bench/profile_split.py --perf keygate   # also `perf record` that system

Where does a request's CPU go: Python and aiohttp (user) or the socket
syscalls (kernel)? With ``--perf``, prints perf's top shared objects and
symbols for the chosen system (needs /usr/bin/perf).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs, seed, systems, wrkrun


def user_sys(pid: int) -> tuple[float, float]:
    user = system = 0.0
    for p in procs.tree(pid):
        stat = procs._stat(p)
        if stat is not None:
            user += int(stat[11]) / procs.CLK_TCK
            system += int(stat[12]) / procs.CLK_TCK
    return user, system


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/profile_split.py", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--systems", default="hello,bare,keygate")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--perf", help="perf record this system during its run")
    args = p.parse_args(argv)
    os.environ.setdefault("KEYGATE_LOG_LEVEL", "WARNING")
    sut, load = procs.cpu_sets(0, 1)
    started: list[procs.Proc] = []
    with tempfile.TemporaryDirectory(prefix="keygate-split-") as tmp:
        work = Path(tmp)
        work.chmod(0o711)
        try:
            small = seed.seed_small(work / "small.db")
            digests = seed.write_digests(work / "digests.txt", [small.token])
            lay = systems.Layout(work, procs.free_port(), work / "none", digests,
                                 small.small_db, None, sut, load, 60.0)
            started.append(systems.start_origin(lay).proc)
            scripts = wrkrun.write_scripts(work)
            for name in args.systems.split(","):
                system = systems.start(name, lay)
                started.append(system.proc)
                u0, s0 = user_sys(system.proc.pid)
                w = wrkrun.start(wrkrun.Load("static", small.token, args.connections),
                                 system.url, args.seconds, scripts, work / "wrk.log", load)
                perf = None
                if args.perf == name:
                    perf = subprocess.Popen(
                        ["perf", "record", "-q", "-g", "-p", str(system.proc.pid), "-o",
                         str(work / "perf.data"), "--", "sleep", str(args.seconds - 1)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                result = wrkrun.finish(w, args.seconds)
                u1, s1 = user_sys(system.proc.pid)
                n = max(result.requests, 1)
                print(f"{name:10s} {result.rps:9,.0f} req/s  user {(u1 - u0) / n * 1e6:6.1f} µs/req"
                      f"  kernel {(s1 - s0) / n * 1e6:6.1f} µs/req", flush=True)
                if perf is not None:
                    perf.wait()
                    for sort in ("dso", "sym"):
                        out = subprocess.run(
                            ["perf", "report", "-i", str(work / "perf.data"), "--no-children",
                             "--sort", sort, "--stdio", "-g", "none", "--percent-limit", "1"],
                            capture_output=True, text=True).stdout
                        print("\n".join(ln for ln in out.splitlines()
                                        if ln and not ln.startswith("#"))[:4000])
                procs.stop(system.proc)
        finally:
            for proc in reversed(started):
                procs.stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
