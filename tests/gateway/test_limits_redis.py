"""The ``redis`` backend (docs/reference.md#the-redis-backend): the Lua script's
GCRA and quota windows against the local backend with a controlled clock,
pipelining, the store's count as a floor, and Redis going away and coming
back under traffic (a private redis-server that the test kills)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.local import LocalLimiter
from keygate.gateway.limits.redis import RedisLimiter
from keygate.gateway.limits.rules import KeyLimits, key_limits
from keygate.gateway.limits.usage import Usage
from tests.support.admin import ApiReply
from tests.support.gateway import GatewayFactory, Keygate, default_route
from tests.support.polling import wait_for
from tests.support.redis import (
    SHARED_URL,
    PrivateRedis,
    drop_prefix,
    redis_prefix,
    shared_redis_answers,
)
from tests.support.upstreams import Recorder


class FakeStore:
    async def add_quota_used(self, counts: Mapping[tuple[str, str], int]) -> dict[str, Any]:
        return {}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    if not await shared_redis_answers():
        pytest.skip(f"no Redis answers at {SHARED_URL}")
    name = redis_prefix()
    yield name
    await drop_prefix(SHARED_URL, name)


@pytest.fixture
async def limiter(prefix: str) -> AsyncIterator[RedisLimiter]:
    lim = RedisLimiter(
        QuotaCounts(FakeStore(), 100),  # type: ignore[arg-type]
        "draft",
        url=SHARED_URL,
        prefix=prefix,
        timeout=2.0,
        fail_open=False,
    )
    await lim.start()
    yield lim
    await lim.stop()


def clocked(lim: RedisLimiter | LocalLimiter, clock: Clock) -> None:
    lim.clock = clock
    if isinstance(lim, RedisLimiter):
        lim.script_clock = clock
    else:
        lim.origin = clock.now


def limits_of(
    key: str, *policies: tuple[int, int, int | None], quota: dict[str, Any] | None = None
) -> KeyLimits:
    rate = [
        {"name": f"p{i}", "limit": limit, "window": window, "burst": burst}
        for i, (limit, window, burst) in enumerate(policies)
    ]
    found = key_limits(key, rate, quota, [])
    assert found is not None
    return found


def outcome(usage: Usage) -> tuple[Any, ...]:
    refusal = usage.refusal
    if refusal is None:
        return ("ok", usage.fields)
    return (refusal.code, refusal.details, refusal.headers, usage.fields)


@pytest.mark.parametrize(
    "policies",
    [
        [(10, 60, 3)],
        [(100, 60, None)],
        [(1, 1, None), (2, 60, None)],
        [(5, 10, 2), (50, 3600, None)],
    ],
)
async def test_redis_script_decides_as_the_local_gcra(
    limiter: RedisLimiter, policies: list[tuple[int, int, int | None]]
) -> None:
    """Each policy's interval is a whole number of microseconds, so the script's
    integer arithmetic and the local floats agree exactly."""
    rng = random.Random(12)
    clock = Clock(1_800_000_000.0)
    local = LocalLimiter(QuotaCounts(FakeStore(), 10), "draft", 10)  # type: ignore[arg-type]
    clocked(local, clock)
    clocked(limiter, clock)
    key = limits_of("gcrarediskey", *policies)
    for _ in range(80):
        clock.now += rng.choice([0, 0, 0.001, 0.25, 1, 2.5, 7])
        assert outcome(await limiter.take(key)) == outcome(local.take_now(key))


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("before", "after", "period"),
    [
        ("2026-12-31T23:59:59", "2027-01-01T00:00:00.5", "day"),
        ("2026-12-31T23:59:59", "2027-01-01T00:00:00.5", "month"),
        ("2027-02-28T23:59:58", "2027-03-01T00:00:00", "month"),
        ("2028-02-28T23:59:59", "2028-02-29T00:00:01", "day"),
    ],
)
async def test_redis_quota_windows_follow_the_utc_calendar(
    limiter: RedisLimiter, before: str, after: str, period: str
) -> None:
    clock = Clock(at(before))
    clocked(limiter, clock)
    local = LocalLimiter(QuotaCounts(FakeStore(), 10), "draft", 10)  # type: ignore[arg-type]
    clocked(local, clock)
    key = limits_of("quotarediskk", quota={"limit": 2, "period": period})
    for moment in (before, after):
        clock.now = at(moment)
        for _ in range(3):
            assert outcome(await limiter.take(key)) == outcome(local.take_now(key))
    assert limiter.counts.pending == 2  # on their way to the store, one per window


async def test_redis_quota_never_starts_below_the_stores_count(limiter: RedisLimiter) -> None:
    clock = Clock(at("2026-12-05T12:00:00"))
    clocked(limiter, clock)
    key = key_limits("floorfloorfl", [], {"limit": 10, "period": "day"}, [], 8, "2026-12-05")
    assert key is not None
    results = [await limiter.take(key) for _ in range(3)]
    assert [r.refusal is None for r in results] == [True, True, False]


async def test_redis_requests_in_flight_share_one_pipeline(limiter: RedisLimiter) -> None:
    key = limits_of("pipelinekeyy", (20, 3600, None))
    results = await asyncio.gather(*(limiter.take(key) for _ in range(100)))
    assert sum(r.refusal is None for r in results) == 20
    assert limiter.batches <= 3, limiter.batches


# --- Redis down mid-traffic -------------------------------------------------------------
async def get(kg: Keygate, token: str) -> ApiReply:
    async with kg.client.get("/x", headers=kg.bearer(token)) as resp:
        return ApiReply(resp.status, resp.headers, await resp.read())


@pytest.mark.parametrize("fail_open", [True, False])
@pytest.mark.parametrize("fast_path", [True, False])
async def test_redis_down_mid_traffic_then_back_without_a_restart(
    keygate_factory: GatewayFactory,
    upstream: Recorder,
    tmp_path: Path,
    fail_open: bool,
    fast_path: bool,
) -> None:
    server = await PrivateRedis(tmp_path).start()
    try:
        kg = await keygate_factory(
            default_route(upstream.url),
            server={"fast_path": fast_path},
            ratelimit={
                "backend": "redis",
                "redis_url": server.url,
                "redis_timeout": 0.5,
                "fail_open": fail_open,
            },
        )
        token = await kg.make_key(
            ["default"], rate_limits=[{"name": "m", "limit": 1000, "window": 60}]
        )
        up = await get(kg, token)
        assert up.status == 200 and up.headers["RateLimit"].startswith('"m";r=999;')

        server.kill()
        down = [await get(kg, token) for _ in range(5)]
        if fail_open:
            assert {r.status for r in down} == {200}
            assert all("RateLimit" not in r.headers for r in down)  # nothing known of the room
            assert all(r.headers["RateLimit-Policy"] == '"m";q=1000;w=60' for r in down)
        else:
            assert {r.status for r in down} == {503}
            assert {r.json["error"]["code"] for r in down} == {"ratelimit_unavailable"}
        assert kg.gw.limiter.backend_errors == 5

        await server.start()  # the same port, empty: the counts start again

        async def counted_again() -> bool:
            reply = await get(kg, token)
            return reply.status == 200 and "RateLimit" in reply.headers

        await wait_for(counted_again, within=10, what="keygate to use Redis again")
    finally:
        server.kill()


async def ready(kg: Keygate) -> tuple[int, dict[str, Any]]:
    async with kg.client.get("/_keygate/ready") as resp:
        return resp.status, await resp.json()


async def test_redis_ready_names_redis_when_it_is_down_then_back(
    keygate_factory: GatewayFactory, upstream: Recorder, tmp_path: Path
) -> None:
    server = await PrivateRedis(tmp_path).start()
    try:
        kg = await keygate_factory(
            default_route(upstream.url),
            ratelimit={"backend": "redis", "redis_url": server.url, "redis_timeout": 0.5},
        )
        status, body = await ready(kg)
        assert (status, body["status"], body["checks"]["redis"]) == (200, "ok", {"status": "ok"})
        assert body["checks"]["store"] == {"status": "ok"}

        server.kill()
        status, body = await ready(kg)
        assert (status, body["status"]) == (200, "degraded")
        assert body["checks"]["redis"]["status"] == "unavailable"
        assert body["checks"]["redis"]["code"] == "ratelimit_unavailable"
        assert body["checks"]["store"] == {"status": "ok"}

        await server.start()

        async def back() -> bool:
            return (await ready(kg))[1]["status"] == "ok"

        await wait_for(back, within=10, what="/ready to see Redis again")
    finally:
        server.kill()


async def test_redis_ready_has_no_redis_check_on_the_local_backend(
    keygate_factory: GatewayFactory, upstream: Recorder
) -> None:
    kg = await keygate_factory(default_route(upstream.url))
    status, body = await ready(kg)
    assert (status, body) == (200, {"status": "ok", "checks": {"store": {"status": "ok"}}})
