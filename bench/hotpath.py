"""Micro-benchmark of keygate's verification hot path for a cached key (timeit).

    python bench/hotpath.py [--number 200000] [--repeat 5]

Calls the real functions: ``Verifier.cached`` (``keyformat.digest`` → cache get
→ status check → last-used touch; the format check runs only on a miss) →
``Policy.allows``, and the same with the format check first; the same hot path
for a key with a rate limit on the local backend (``LocalLimiter.take_now``,
its RateLimit fields) and with an allowed network; then credential
extraction (``credentials.find_credential``) and path normalisation
(``pathnorm.normalise_path``) on their own. Prints the best of ``--repeat``
runs in microseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/hotpath.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from multidict import CIMultiDict, CIMultiDictProxy

from keygate.config.settings import AuthSettings
from keygate.gateway.auth import keyformat
from keygate.gateway.auth.cache import KeyCache
from keygate.gateway.auth.credentials import Sources, find_credential
from keygate.gateway.auth.policy import Policy
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.auth.verify import Verifier
from keygate.gateway.http.clientip import client_address
from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.local import LocalLimiter
from keygate.gateway.limits.rules import key_limits
from keygate.gateway.request.pathnorm import normalise_path
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store.records import BUILTIN_GROUPS
from keygate.gateway.store.sqlite.store import SQLiteStore

PREFIX = AuthSettings().key_prefix
PATH = "/v1/items/42"


async def _cached_key(db: Path) -> tuple[Verifier, str]:
    """A verifier whose cache holds one valid key (loaded through the miss path)."""
    store = SQLiteStore(db)
    await store.open()
    try:
        ctx = ServiceContext(store, AuthSettings())
        admin = await create_first_admin(ctx)
        actor = Actor(admin.key.owner_id, "admin", None, ("admin",))
        issued = await Services.build(ctx).keys.create(actor, {"groups": ["default"]})
        auth = ctx.auth
        cache = KeyCache(auth.cache_size, auth.cache_ttl, auth.negative_cache_ttl)
        verifier = Verifier(store, cache, UsageRecorder(store, 3600.0), PREFIX)
        await verifier.load(keyformat.digest(issued.token))
        return verifier, issued.token
    finally:
        await store.close()  # a cache hit never touches the store


def cases() -> dict[str, Callable[[], object]]:
    with tempfile.TemporaryDirectory(prefix="keygate-hotpath-") as tmp:
        verifier, token = asyncio.run(_cached_key(Path(tmp) / "hot.db"))
    policy = Policy({name: rules for name, (_, rules) in BUILTIN_GROUPS.items()})
    _, principal = verifier.cached(token)
    assert principal is not None, "the key should be cached"
    groups = principal.groups
    digest = keyformat.digest(token)
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "Host": "api.example.com",
                "User-Agent": "bench/1.0",
                "Accept": "*/*",
                "X-API-Key": token,
            }
        )
    )
    sources = Sources.parse(AuthSettings().sources)
    limiter = LocalLimiter(QuotaCounts(verifier.store, 1000), "draft", 1000)
    generous = [{"name": "generous", "limit": 1_000_000_000, "window": 1}]
    limited = key_limits(principal.key_id, generous, None, [])
    fenced = key_limits(principal.key_id, [], None, ["10.0.0.0/8", "127.0.0.0/8"])
    assert limited is not None and fenced is not None and fenced.allowlist is not None
    allowlist = fenced.allowlist

    def hot_path() -> bool:
        _, found = verifier.cached(token)
        assert found is not None
        return policy.allows(found.groups, "default", "GET", PATH)

    def checked_first() -> bool:
        keyformat.check_format(token, PREFIX)
        _, found = verifier.cached(token)
        assert found is not None
        return policy.allows(found.groups, "default", "GET", PATH)

    def with_rate_limit() -> bool:
        _, found = verifier.cached(token)
        assert found is not None
        allowed = policy.allows(found.groups, "default", "GET", PATH)
        limiter.take_now(limited).check()
        return allowed

    def with_allowed_ips() -> bool:
        _, found = verifier.cached(token)
        assert found is not None
        address = client_address("127.0.0.1", (), None)
        assert address is not None and allowlist.allows(address)
        return policy.allows(found.groups, "default", "GET", PATH)

    return {
        "hot path: digest → cache get → status → policy (Verifier.cached)": hot_path,
        "  + a rate limit (local backend: GCRA, RateLimit fields)": with_rate_limit,
        "  + allowed_ips (the peer's address in two networks)": with_allowed_ips,
        "  LocalLimiter.take_now (one rate limit)": lambda: limiter.take_now(limited),
        "  the same with the format check first (a miss's order)": checked_first,
        "  keyformat.check_format": lambda: keyformat.check_format(token, PREFIX),
        "  keyformat.digest": lambda: keyformat.digest(token),
        "  KeyCache.get": lambda: verifier.cache.get(digest),
        "  Policy.allows": lambda: policy.allows(groups, "default", "GET", PATH),
        "credentials.find_credential (X-API-Key)": lambda: find_credential(
            headers, "", sources, PREFIX
        ),
        "pathnorm.normalise_path (plain path)": lambda: normalise_path(PATH),
        **_metrics_cases(),
        "pathnorm.normalise_path (dots, %7E, //)": lambda: normalise_path("/v1/./a/%7eb//c/../42"),
    }


def _metrics_cases() -> dict[str, Callable[[], object]]:
    """One request's counting: keygate's plain integers (Counts.request: a counter,
    a histogram, a decision) against prometheus-client's own Counter and
    Histogram doing the same (a lock per increment)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from keygate.gateway.metrics.counts import BUCKETS, Counts

    counts = Counts()
    registry = CollectorRegistry()
    requests = Counter("r", "r", ["route", "method", "code"], registry=registry)
    duration = Histogram("d", "d", ["route"], buckets=BUCKETS, registry=registry)
    decisions = Counter("a", "a", ["result", "mode"], registry=registry)

    def library() -> None:
        requests.labels("default", "GET", "200").inc()
        duration.labels("default").observe(0.0042)
        decisions.labels("allowed", "proxy").inc()

    return {
        "metrics: Counts.request (plain integers, keygate's)": lambda: counts.request(
            "default", "GET", 200, 0.0042, None, "3k9x2m0qzt7a", "proxy"
        ),
        "metrics: prometheus-client Counter+Histogram+Counter": library,
    }


def measure(number: int = 200_000, repeat: int = 5) -> dict[str, float]:
    """Microseconds per call of each case (best of ``repeat`` runs of ``number`` calls)."""
    out = {}
    for name, fn in cases().items():
        best = min(timeit.Timer(fn).repeat(repeat=repeat, number=number))
        out[name] = best / number * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/hotpath.py", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--number", type=int, default=200_000, help="calls per run")
    p.add_argument("--repeat", type=int, default=5, help="runs; the best one counts")
    args = p.parse_args(argv)
    results = measure(args.number, args.repeat)
    width = max(map(len, results))
    print(f"{'case':<{width}}  µs/call")
    for name, us in results.items():
        print(f"{name:<{width}}  {us:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
