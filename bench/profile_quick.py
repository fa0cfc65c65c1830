"""Quick same-run comparison for issue 5: keygate vs the bare forwarder and nginx.

    python bench/profile_quick.py [--seconds 5] [--rounds 3] [--log-level INFO]

Starts the origin (nginx ``return 200 "hello"``, load core), then nginx
proxy_pass, ``bench/bare_forwarder.py`` and one keygate worker (core 0), and
runs wrk (1 thread, load core) against each in interleaved rounds: 50
connections and 1 connection, valid cached key. Prints the medians and the
ratios the issue asks for: keygate ÷ bare and keygate ÷ nginx req/s at 50
connections, keygate's p50 ÷ nginx's at 1 connection. ``--log-level`` sets
``KEYGATE_LOG_LEVEL`` (the access log stays on; at WARNING its lines are off).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/profile_quick.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs, seed, systems, wrkrun

SYSTEMS = ("nginx", "bare", "keygate")


def start_alt(root: Path, lay: systems.Layout) -> systems.System:
    """keygate from another source tree (say, a copy with a change to compare)."""
    port = procs.free_port()
    db = lay.work / "alt.db"
    db.write_bytes(lay.small_db.read_bytes())
    conf = systems._keygate_conf(lay, "alt", port, db, 1)
    env = {**os.environ, "PYTHONPATH": str(root.resolve())}
    argv = [sys.executable, "-m", "keygate", "serve", "--config", str(conf)]
    proc = procs.spawn("alt", argv, lay.work / "alt.log", cpus=lay.sut_cpus, env=env, cwd=root)
    procs.wait_http(proc, port, "/_keygate/health", lay.ready_timeout)
    return systems.System("keygate", port, proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/profile_quick.py", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--log-level", default="INFO", help="KEYGATE_LOG_LEVEL for keygate")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="also: hello")
    p.add_argument("--alt", type=Path, help="also run keygate from this source tree as 'alt'")
    args = p.parse_args(argv)
    os.environ["KEYGATE_LOG_LEVEL"] = args.log_level
    names = args.systems.split(",")
    sut, load = procs.cpu_sets(0, 1)
    started: list[procs.Proc] = []
    rps: dict[tuple[str, int], list[float]] = {}
    p50: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="keygate-quick-") as tmp:
        work = Path(tmp)
        work.chmod(0o711)
        try:
            small = seed.seed_small(work / "small.db")
            digests = seed.write_digests(work / "digests.txt", [small.token])
            lay = systems.Layout(work, procs.free_port(), work / "none", digests,
                                 small.small_db, None, sut, load, 60.0)
            started.append(systems.start_origin(lay).proc)
            running = {}
            for name in names:
                running[name] = systems.start(name, lay)
                started.append(running[name].proc)
            if args.alt is not None:
                running["alt"] = start_alt(args.alt, lay)
                started.append(running["alt"].proc)
                names.append("alt")
            scripts = wrkrun.write_scripts(work)
            for rnd in range(args.rounds):
                for conns in (50, 1):
                    order = names[rnd % len(names):] + names[: rnd % len(names)]
                    for name in order:
                        system = running[name]
                        cpu0 = procs.cpu_seconds(system.proc.pid)
                        w = wrkrun.start(wrkrun.Load("static", small.token, conns), system.url,
                                         args.seconds, scripts, work / "wrk.log", load)
                        result = wrkrun.finish(w, args.seconds)
                        used = procs.cpu_seconds(system.proc.pid) - cpu0
                        assert result.non2xx == 0, f"{name}: {result.non2xx} non-2xx"
                        rps.setdefault((name, conns), []).append(result.rps)
                        p50.setdefault((name, conns), []).append(result.p50_ms)
                        cpu.setdefault((name, conns), []).append(
                            used / max(result.requests, 1) * 1e6)
        finally:
            for proc in reversed(started):
                procs.stop(proc)
    med = statistics.median
    print(f"load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.seconds:g} s; "
          f"KEYGATE_LOG_LEVEL={args.log_level}")
    print(f"{'system':8s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>7s} {'CPU µs/req':>10s}")
    for conns in (50, 1):
        for name in names:
            key = (name, conns)
            print(f"{name:8s} {conns:5d} {med(rps[key]):9,.0f} {med(p50[key]):7.3f} "
                  f"{med(cpu[key]):10.1f}")
    for subject in [n for n in ("keygate", "alt") if n in names]:
        if not {"bare", "nginx"} <= set(names):
            break
        k = med(rps[(subject, 50)])
        print(f"\n{subject}:")
        print(f"c50 req/s: {subject}/bare {k / med(rps[('bare', 50)]):.2f}x (target >= 2.0), "
              f"{subject}/nginx {k / med(rps[('nginx', 50)]):.2f}x (target >= 0.20)")
        print(f"c50 CPU/req: bare/{subject} "
              f"{med(cpu[('bare', 50)]) / med(cpu[(subject, 50)]):.2f}x")
        print(f"c1 p50: {subject}/nginx "
              f"{med(p50[(subject, 1)]) / med(p50[('nginx', 1)]):.2f}x (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
