"""The systems under test and how each is started (all on 127.0.0.1, free ports).

``origin`` (nginx ``return 200 "hello"``, ``/big`` = 1 MiB) runs on the load
core next to wrk; every other system runs on the system-under-test core.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from keygate.gateway.http.tls import CIPHERS
from keygate.gateway.webhooks.signing import new_secret

from . import nginx, seed
from .procs import Proc, free_port, spawn, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

DESCRIPTIONS = {
    "direct": "wrk → origin (no proxy)",
    "hello": "aiohttp + uvloop hello world (no forwarding)",
    "nginx": "nginx proxy_pass, upstream keep-alive, 1 worker",
    "nginx-map": "nginx + `map $http_x_api_key` key check",
    "bare": "bench/bare_forwarder.py (aiohttp, sha256 → dict)",
    "keygate": "keygate, 1 worker",
    "keygate-nolog": "keygate, 1 worker, `server.access_log = false`",
    "keygate-nometrics": "keygate, 1 worker, `[metrics] enabled = false` (`keygate` counts them)",
    "nginx-authreq": "nginx `auth_request` → keygate `/_keygate/auth` (forward-auth) → origin; "
    "nginx (1 worker) on the load core, keygate on the SUT core; CPU and RSS are keygate's",
    "nginx2-authreq": "the same with nginx's 2 workers on both cores (keygate still pinned to "
    "the SUT core): more room for nginx, so keygate is nearer saturation",
    "keygate-nofast": "keygate, 1 worker, `server.fast_path = false` (no edge: aiohttp serves)",
    "keygate-poll": "keygate, 1 worker, `server.busy_poll_us = 50` (the loop polls 50 µs "
    "after each write before it sleeps)",
    "keygate-w2": "keygate, `server.workers = 2` (both cores)",
    "keygate-limited": "keygate, 1 worker, the key with a generous rate limit (local backend)",
    "keygate-redis": "keygate, 1 worker, the key with a generous rate limit on the redis backend "
    "(its own redis-server on the load core)",
    "keygate-webhooks": "keygate, 1 worker, every key with a webhook_url and an operator "
    "endpoint for key.* (the deliverer running)",
    "keygate-features": "keygate, 1 worker, every feature on: access log, identity headers, "
    "a generous rate limit and quota on the key (local backend), an allowlist that matches, "
    "metrics, webhooks (every key with a webhook_url, an operator endpoint for key.*)",
    "keygate-1m": "keygate, 1 worker, 1,000,000 keys, cache_size 100,000",
    "keygate-imported": "keygate, 1 worker, 10,000 imported keys besides its own",
    "keygate-1m-thread": "keygate-1m with `store.sqlite_loop_reads = false` (misses read on "
    "the reader thread)",
    "keygate-1m-pg": "keygate-1m on PostgreSQL (the same keys copied into a database of the "
    "bench's own; misses batched into `= ANY($1)`)",
    "nginx-tls": "nginx terminating TLS, proxy_pass, upstream keep-alive, 1 worker",
    "keygate-tls": "keygate, 1 worker, TLS on the listener (the edge over TLS)",
    "keygate-tls-nofast": "keygate, 1 worker, TLS, `server.fast_path = false`",
}
# keygate-imported's imported keys: enough that the refusals are decided by the
# in-memory digest set, not by the format check.
IMPORTED_KEYS = 10_000
# keygate-poll's server.busy_poll_us: past the longest wait for the next
# event seen at one connection here (wrk's turnaround, the origin's answer).
BUSY_POLL_US = 50
TLS_SYSTEMS = frozenset({"nginx-tls", "keygate-tls", "keygate-tls-nofast"})
# keygate-features: metrics are on by default; its webhooks are keygate-webhooks'
# (see _keygate_conf and start), on top of the per-key limits and allowlist
# seed.every_feature sets.
WEBHOOK_SYSTEMS = frozenset({"keygate-webhooks", "keygate-features"})


@dataclass
class System:
    name: str
    port: int
    proc: Proc  # whose process tree is measured
    extra: tuple[Proc, ...] = ()  # started with it, not measured (nginx-authreq's nginx)

    @property
    def url(self) -> str:
        """What wrk is pointed at."""
        scheme = "https" if self.name in TLS_SYSTEMS else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.name]


@dataclass(frozen=True)
class Layout:
    """Where things are and which CPUs to use; filled in by ``run.py``."""

    work: Path
    origin_port: int
    map_file: Path
    digests_file: Path
    small_db: Path
    large_db: Path | None
    sut_cpus: set[int] | None
    load_cpus: set[int] | None
    ready_timeout: float
    tls: tuple[Path, Path] | None = None  # certificate and key of the TLS systems
    redis_port: int | None = None  # keygate-redis's own redis-server (start_redis)
    large_pg: str | None = None  # keygate-1m-pg's database (seed.seed_postgres)


def write_tls_files(work: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by ``trustme`` (the test extra)."""
    try:
        import trustme
    except ImportError:
        raise RuntimeError("the TLS systems need trustme: pip install -e '.[test]'") from None
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert_file, key_file = work / "tls.crt", work / "tls.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def start_origin(lay: Layout) -> System:
    www = lay.work / "www"
    nginx.write_big_file(www)
    conf = nginx.origin_conf(lay.work / "nginx-origin", lay.origin_port, www)
    proc = nginx.start("origin", conf, lay.load_cpus)
    wait_http(proc, lay.origin_port, "/", lay.ready_timeout)
    return System("direct", lay.origin_port, proc)


def start_redis(lay: Layout) -> tuple[Proc, int]:
    """A redis-server of the bench's own for keygate-redis, on the load core (as the
    origin is): it must not take the system under test's core. No persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("keygate-redis needs redis-server (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(lay.work)]
    proc = spawn("redis", argv, lay.work / "redis.log", cpus=lay.load_cpus)
    deadline = time.monotonic() + lay.ready_timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not answer")


def _keygate_conf(lay: Layout, name: str, port: int, store_url: str, workers: int) -> Path:
    conf = lay.work / f"{name}.toml"
    access_log = "false" if name == "keygate-nolog" else "true"
    no_edge = "fast_path = false\n" if name.endswith("-nofast") else ""
    if name == "keygate-poll":
        no_edge = f"busy_poll_us = {BUSY_POLL_US}\n"
    tls = ""
    if name in TLS_SYSTEMS:
        assert lay.tls is not None
        tls = f'tls_cert_file = "{lay.tls[0]}"\ntls_key_file = "{lay.tls[1]}"\n'
    redis = (
        f'[ratelimit]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{lay.redis_port}/0"\n\n'
        if name == "keygate-redis"
        else ""
    )
    hooks = (
        "[webhooks]\nallow_http = true\nallow_private = true\n"
        "[[webhooks.endpoints]]\n"
        f'url = "http://127.0.0.1:{lay.origin_port}/ops"\n'
        f'secret = "{new_secret()}"\nevents = ["key.*"]\n\n'
        if name in WEBHOOK_SYSTEMS
        else ""
    )
    sections = ""
    if name == "keygate-nometrics":
        sections += "[metrics]\nenabled = false\n\n"
    if name in ("nginx-authreq", "nginx2-authreq"):
        sections += "[forward_auth]\nenabled = true\nnginx_compat = true\n\n"
        tls += 'trusted_proxies = ["127.0.0.1/32"]\n'
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = {workers}\n'
        f"access_log = {access_log}\n{no_edge}{tls}\n{sections}"
        f'[store]\nurl = "{store_url}"\n'
        f"sqlite_loop_reads = {'false' if name == 'keygate-1m-thread' else 'true'}\n\n"
        "[auth]\ncache_size = 100000\n\n"
        f"{redis}{hooks}"
        '[[routes]]\nname = "default"\nprefix = "/"\n'
        f'upstream = "http://127.0.0.1:{lay.origin_port}"\n'
    )
    return conf


def start(name: str, lay: Layout) -> System:
    """Start system ``name`` (not ``direct``) and wait until it answers."""
    port = free_port()
    log = lay.work / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    health = "/"
    if name in ("nginx", "nginx-map", "nginx-tls"):
        map_file = lay.map_file if name == "nginx-map" else None
        tls = None
        if name == "nginx-tls":
            assert lay.tls is not None
            tls = (*lay.tls, CIPHERS)
        conf = nginx.proxy_conf(lay.work / f"nginx-{name}", port, lay.origin_port, map_file, tls)
        proc = nginx.start(name, conf, lay.sut_cpus)
    elif name == "hello":
        argv = [sys.executable, str(BENCH / "hello.py"), str(port)]
        proc = spawn(name, argv, log, cpus=lay.sut_cpus, env=env)
    elif name == "bare":
        origin = f"http://127.0.0.1:{lay.origin_port}"
        argv = [sys.executable, str(BENCH / "bare_forwarder.py"), str(port), origin,
                str(lay.digests_file)]
        proc = spawn(name, argv, log, cpus=lay.sut_cpus, env=env)
    elif name in ("nginx-authreq", "nginx2-authreq"):
        kport = free_port()
        db = seed.copy_db(lay.small_db, lay.work / f"{name}.db")
        conf = _keygate_conf(lay, name, kport, f"sqlite:///{db}", 1)
        argv = [sys.executable, "-m", "keygate", "serve", "--config", str(conf)]
        keygate = spawn(f"{name}-keygate", argv, log, cpus=lay.sut_cpus, env=env, cwd=ROOT)
        try:
            wait_http(keygate, kport, "/_keygate/health", lay.ready_timeout)
            two = name == "nginx2-authreq"
            nconf = nginx.authreq_conf(
                lay.work / f"nginx-{name}", port, kport, lay.origin_port, 2 if two else 1
            )
            # On the load core, as the origin (the comparison is per keygate core);
            # nginx2-authreq's two workers may run on either core.
            front = nginx.start(name, nconf, None if two else lay.load_cpus)
            wait_http(front, port, "/", lay.ready_timeout)
        except RuntimeError:
            stop(keygate)
            raise
        return System(name, port, keygate, (front,))
    elif name.startswith("keygate"):
        workers = 2 if name == "keygate-w2" else 1
        if name == "keygate-1m-pg":
            assert lay.large_pg is not None
            store_url = lay.large_pg
        elif name.startswith("keygate-1m"):
            assert lay.large_db is not None
            store_url = f"sqlite:///{lay.large_db}"
        else:
            db = seed.copy_db(lay.small_db, lay.work / f"{name}.db")  # each its own store
            if name in ("keygate-limited", "keygate-redis"):
                seed.generous_limit(db)
            elif name == "keygate-features":
                seed.every_feature(db)
                seed.webhooks_everywhere(db, f"http://127.0.0.1:{lay.origin_port}/hook")
            elif name == "keygate-imported":
                seed.add_imported(db, seed.foreign_tokens(IMPORTED_KEYS))
            elif name == "keygate-webhooks":
                seed.webhooks_everywhere(db, f"http://127.0.0.1:{lay.origin_port}/hook")
            store_url = f"sqlite:///{db}"
        conf = _keygate_conf(lay, name, port, store_url, workers)
        # Two workers on a 2-core machine: give them both cores (shared with wrk).
        both = None if lay.sut_cpus is None else lay.sut_cpus | (lay.load_cpus or set())
        cpus = both if workers > 1 else lay.sut_cpus
        argv = [sys.executable, "-m", "keygate", "serve", "--config", str(conf)]
        proc = spawn(name, argv, log, cpus=cpus, env=env, cwd=ROOT)
        health = "/_keygate/health"
    else:
        raise ValueError(f"unknown system {name!r}")
    wait_http(proc, port, health, lay.ready_timeout, tls=name in TLS_SYSTEMS)
    return System(name, port, proc)
