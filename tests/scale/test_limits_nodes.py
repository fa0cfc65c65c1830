"""Rate limits and quotas exact across workers and nodes on one Redis, and limit
changes reaching every worker within 1 s (docs/reference.md#the-redis-backend).

Two ``keygate serve`` nodes of two workers each share a PostgreSQL database
and the machine's Redis (under a key prefix of the test's own). Requests go on
fresh connections, so SO_REUSEPORT spreads them over every worker of both.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.pg import NO_SERVER, PG_SERVER, create_database, drop_database
from tests.support.polling import wait_for
from tests.support.processes import Node, node_env, serve_node
from tests.support.redis import SHARED_URL, drop_prefix, redis_prefix, shared_redis_answers
from tests.support.upstreams import Recorder

pytestmark = pytest.mark.slow


@pytest.fixture
async def nodes(tmp_path: Path, upstream: Recorder) -> AsyncIterator[tuple[Node, Node]]:
    if not await shared_redis_answers():
        pytest.skip(f"no Redis answers at {SHARED_URL}")
    try:
        db = await create_database("kg_limits")
    except NO_SERVER as exc:
        pytest.skip(f"no PostgreSQL server answers at {PG_SERVER}: {type(exc).__name__}")
    prefix = redis_prefix()
    env = node_env(
        db,
        KEYGATE_RATELIMIT_BACKEND="redis",
        KEYGATE_RATELIMIT_REDIS_URL=SHARED_URL,
        KEYGATE_RATELIMIT_REDIS_PREFIX=prefix,
        KEYGATE_RATELIMIT_REDIS_TIMEOUT="5",  # a loaded machine is no outage
        KEYGATE_RATELIMIT_FAIL_OPEN="false",  # an outage would show as 503s, not as passes
        KEYGATE_STORE_CHANGE_POLL_INTERVAL="5",  # LISTEN/NOTIFY must carry the changes
    )
    started: list[Node] = []
    try:
        for name in ("a", "b"):
            started.append(await serve_node(tmp_path, env, upstream.url, workers=2, name=name))
        yield started[0], started[1]
    finally:
        for node in started:
            assert node.stop() == 0, node.stderr()
        await drop_prefix(SHARED_URL, prefix)
        await drop_database(db)


def _admin(node: Node) -> dict[str, str]:
    assert node.admin_token is not None
    return {"Authorization": f"Bearer {node.admin_token}"}


async def _create_key(node: Node, **body: object) -> tuple[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{node.url}/_keygate/api/v1/keys",
            json={"groups": ["default"], **body},
            headers=_admin(node),
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
        created = await resp.json()
    return created["token"], created["key"]["id"]


async def _burst(url: str, token: str, count: int) -> list[int]:
    """``count`` requests at once, each on its own connection."""
    connector = aiohttp.TCPConnector(force_close=True, limit=count)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> int:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_rate_limit_is_exact_across_two_nodes_of_two_workers(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    token, _ = await _create_key(a, rate_limits=[{"name": "h", "limit": 50, "window": 3600}])
    results = await asyncio.gather(
        _burst(f"{a.url}/x", token, 100), _burst(f"{b.url}/x", token, 100)
    )
    statuses = Counter(s for batch in results for s in batch)
    assert statuses == {200: 50, 429: 150}, statuses
    # Access lines are written in batches (every half second).
    await wait_for(
        lambda: len(a.access_pids()) == 2 and len(b.access_pids()) == 2,
        within=5,
        what="every worker of both nodes to have served",
    )


async def test_quota_is_exact_across_two_nodes_of_two_workers(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    # A month, not a day: the test must not straddle the end of its window.
    token, key_id = await _create_key(a, quota={"limit": 1000, "period": "month"})
    results = await asyncio.gather(
        *(_burst(f"{node.url}/x", token, 400) for node in (a, b, a, b))
    )
    statuses = Counter(s for batch in results for s in batch)
    assert statuses == {200: 1000, 429: 600}, statuses

    async def recorded() -> bool:  # every worker's count flushed to the store
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{b.url}/_keygate/api/v1/keys/{key_id}", headers=_admin(a)) as resp,
        ):
            return (await resp.json())["quota_used"] == 1000

    await wait_for(recorded, within=10, what="quota_used to reach 1000 in the key record")


async def test_limits_changed_through_the_api_reach_every_worker_within_1s(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    token, key_id = await _create_key(a)

    async def policy_seen(node: Node) -> str | None:
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"{node.url}/x", headers={"Authorization": f"Bearer {token}"}) as resp,
        ):
            await resp.read()
            return resp.headers.get("RateLimit-Policy")

    async def every_worker_cached() -> bool:  # the key in every worker's cache first
        await asyncio.gather(*(policy_seen(n) for n in (a, b, a, b)))
        return all(len(n.access_pids()) == 2 for n in (a, b))

    await wait_for(every_worker_cached, within=20, every=0, what="all four workers serving")
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            f"{a.url}/_keygate/api/v1/keys/{key_id}",
            json={"rate_limits": [{"name": "new", "limit": 1000, "window": 60}]},
            headers=_admin(a),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    acknowledged = time.monotonic()
    while time.monotonic() - acknowledged < 1.0:
        await asyncio.gather(policy_seen(a), policy_seen(b))
    after = await asyncio.gather(*(policy_seen(n) for n in (a, b) for _ in range(20)))
    assert set(after) == {'"new";q=1000;w=60'}, after
