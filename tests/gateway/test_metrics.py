"""``{admin_prefix}/metrics`` (docs/reference.md#metrics): the exposition parses,
counters move per outcome on both front ends, who may scrape, no label value
from a request, and two real workers answering with the totals of both."""

from __future__ import annotations

import json
import os
import random
import signal
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keygate.config.settings import Route
from keygate.gateway.metrics.counts import METHODS
from tests.support.gateway import GatewayFactory, Keygate
from tests.support.polling import wait_for
from tests.support.processes import node_env, run_keygate, serve_node, status_fresh
from tests.support.raw import exchange, free_port, http
from tests.support.upstreams import Recorder

METRICS = "/_keygate/metrics"
FAMILIES = {
    "keygate_requests",
    "keygate_request_duration_seconds",
    "keygate_upstream_duration_seconds",
    "keygate_auth_decisions",
    "keygate_upstream_errors",
    "keygate_key_cache_lookups",
    "keygate_in_flight_requests",
    "keygate_invalidations",
    "keygate_store_errors",
    "keygate_webhook_deliveries",
    "keygate_webhook_queue_depth",
    "keygate_ratelimit_backend_errors",
    "keygate_build_info",
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, sorted labels); the text must parse."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


@pytest.fixture(params=["edge", "aiohttp"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "edge")


@pytest.fixture
def make(
    keygate_factory: GatewayFactory, upstream: Recorder, fast_path: bool
) -> Callable[..., Any]:
    async def start(metrics: dict[str, Any] | None = None, **server: Any) -> Keygate:
        return await keygate_factory(
            (
                Route(name="default", prefix="/", upstream=upstream.url),
                Route(name="dead", prefix="/dead", upstream=f"http://127.0.0.1:{free_port()}"),
            ),
            server={"fast_path": fast_path, "trusted_proxies": ("127.0.0.1/32",), **server},
            metrics=metrics,
            forward_auth={"enabled": True},
        )

    return start


@pytest.fixture
async def kg(make: Callable[..., Any]) -> Keygate:
    return await make()  # type: ignore[no-any-return]


async def scrape(kg: Keygate, **headers: str) -> tuple[int, str]:
    async with kg.client.get(METRICS, headers=headers) as resp:
        return resp.status, await resp.text()


async def samples_of(kg: Keygate) -> Samples:
    status, text = await scrape(kg)
    assert status == 200, text
    return parse(text)


async def test_metrics_exposition_parses_with_every_family(kg: Keygate) -> None:
    async with kg.client.get(METRICS) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert resp.headers["Cache-Control"] == "no-store"
        text = await resp.text()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert names >= FAMILIES
    samples = parse(text)
    assert value(samples, "keygate_build_info", version=kg.gw.settings and _version()) == 1


def _version() -> str:
    from keygate import __version__

    return __version__


async def get(kg: Keygate, path: str, token: str | None = None, **headers: str) -> int:
    pairs = [("Authorization", f"Bearer {token}")] if token else []
    reply = await exchange(kg.port, http("GET", path, pairs + list(headers.items())))
    return reply.status


async def test_metrics_count_each_outcome(kg: Keygate) -> None:
    actor = await kg.admin_actor()
    await kg.services.groups.create(actor, {"name": "nothing", "rules": []})
    valid = await kg.make_key(["default"])
    limited = await kg.make_key(["default"], rate_limits=[{"name": "m", "limit": 1, "window": 60}])
    quota = await kg.make_key(["default"], quota={"limit": 1, "period": "day"})
    walled = await kg.make_key(["default"], allowed_ips=["10.0.0.0/8"])
    nothing = await kg.make_key(["nothing"])
    disabled = await kg.make_key(["default"])
    await kg.services.keys.update(actor, disabled.split("_")[1], {"status": "disabled"})
    before = await samples_of(kg)
    outcomes = [
        (valid, "/x", 200, "allowed"),
        (valid, "/x", 200, "allowed"),
        (None, "/x", 401, "missing_api_key"),
        ("kg_garbage", "/x", 401, "invalid_api_key"),
        (disabled, "/x", 401, "key_disabled"),
        (nothing, "/x", 403, "forbidden"),
        (walled, "/x", 403, "ip_not_allowed"),
        (limited, "/x", 200, "allowed"),
        (limited, "/x", 429, "rate_limited"),
        (quota, "/x", 200, "allowed"),
        (quota, "/x", 429, "quota_exceeded"),
    ]
    for token, path, status, _ in outcomes:
        assert await get(kg, path, token) == status
    assert await get(kg, "/dead/x", valid) == 502
    after = await samples_of(kg)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for result in {o[3] for o in outcomes}:
        expected = sum(1 for o in outcomes if o[3] == result) + (result == "allowed")
        got = moved("keygate_auth_decisions_total", result=result, mode="proxy")
        assert got == expected, result
    assert moved("keygate_requests_total", route="default", method="GET", code="200") == 4
    assert moved("keygate_requests_total", route="default", method="GET", code="401") == 3
    assert moved("keygate_requests_total", route="dead", method="GET", code="502") == 1
    assert moved("keygate_upstream_errors_total", route="dead", reason="unavailable") == 1
    assert moved("keygate_request_duration_seconds_count", route="default") == len(outcomes)
    assert moved("keygate_upstream_duration_seconds_count", route="default") == 4
    assert moved("keygate_key_cache_lookups_total", result="hit") >= 1
    assert moved("keygate_key_cache_lookups_total", result="miss") >= 1
    assert value(after, "keygate_in_flight_requests") >= 0


async def test_metrics_count_forward_auth_decisions(kg: Keygate) -> None:
    token = await kg.make_key(["default"])
    before = await samples_of(kg)
    for key, status in ((token, 200), (None, 401)):
        headers = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/x")]
        if key:
            headers.append(("Authorization", f"Bearer {key}"))
        assert (await exchange(kg.port, http("GET", "/_keygate/auth", headers))).status == status
    after = await samples_of(kg)
    for result in ("allowed", "missing_api_key"):
        labels = {"result": result, "mode": "forward_auth"}
        assert value(after, "keygate_auth_decisions_total", **labels) - value(
            before, "keygate_auth_decisions_total", **labels
        ) == 1


async def test_metrics_invalidations_count_changes(kg: Keygate) -> None:
    before = await samples_of(kg)
    await kg.make_key(["default"])
    after = await samples_of(kg)
    assert value(after, "keygate_invalidations_total", source="local") > value(
        before, "keygate_invalidations_total", source="local"
    )


async def test_metrics_need_an_admin_key_outside_allow(make: Callable[..., Any]) -> None:
    kg = await make(metrics={"allow": ()})
    member = await kg.make_key(["default"])
    status, text = await scrape(kg)
    assert status == 401 and '"missing_api_key"' in text
    status, text = await scrape(kg, Authorization=f"Bearer {member}")
    assert status == 403 and '"forbidden"' in text
    status, text = await scrape(kg, Authorization=f"Bearer {kg.admin_token}")
    assert status == 200
    parse(text)


async def test_metrics_refusal_names_the_admin_group(make: Callable[..., Any]) -> None:
    """Only admin keys may scrape: the 403 says so, whatever groups the key has."""
    kg = await make(metrics={"allow": ()})
    for groups in (["default"], ["self-service"]):
        member = await kg.make_key(groups)
        status, text = await scrape(kg, Authorization=f"Bearer {member}")
        assert status == 403, text
        assert "This needs the admin group." in text, text


async def test_metrics_allow_judges_the_client_behind_a_trusted_proxy(
    make: Callable[..., Any],
) -> None:
    """The peer 127.0.0.1 is a trusted proxy here: the client its X-Forwarded-For
    names is judged, as allowed_ips judge it, not the proxy."""
    kg = await make(metrics={"allow": ("127.0.0.0/8", "198.51.100.0/24")})
    assert (await scrape(kg))[0] == 200  # the peer itself, no proxy hop
    assert (await scrape(kg, **{"X-Forwarded-For": "198.51.100.7"}))[0] == 200
    status, text = await scrape(kg, **{"X-Forwarded-For": "203.0.113.9"})
    assert status == 401 and '"missing_api_key"' in text
    status, _ = await scrape(
        kg, **{"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {kg.admin_token}"}
    )
    assert status == 200


async def test_metrics_allow_ignores_forwarded_for_from_an_untrusted_peer(
    make: Callable[..., Any],
) -> None:
    kg = await make(metrics={"allow": ("127.0.0.0/8",)}, trusted_proxies=())
    assert (await scrape(kg, **{"X-Forwarded-For": "203.0.113.9"}))[0] == 200


async def test_metrics_turned_off_is_404(make: Callable[..., Any]) -> None:
    kg = await make(metrics={"enabled": False})
    status, text = await scrape(kg)
    assert status == 404 and '"not_found"' in text
    assert kg.gw.metrics is None


async def test_metrics_no_label_value_comes_from_a_request(kg: Keygate) -> None:
    """Random paths, methods and keys: the series stay few, their labels known."""
    token = await kg.make_key(["default"])
    rng = random.Random(13)
    letters = string.ascii_letters + string.digits
    for i in range(150):
        path = "/" + "/".join(
            "".join(rng.choices(letters, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 4))
        )
        method = rng.choice(["GET", "POST", "BREW", "PROPFIND", "X" + str(i), "DELETE"])
        key = rng.choice([token, None, "kg_" + "".join(rng.choices(letters, k=40))])
        headers = [("Authorization", f"Bearer {key}")] if key else []
        headers.append(("X-Forwarded-For", f"198.51.100.{i % 250}"))
        await exchange(kg.port, http(method, path, headers, b"x" if method == "POST" else b""))
    samples = await samples_of(kg)
    routes = {"default", "dead", "_none", "_admin"}
    for (_name, labels), _ in samples.items():
        labelled = dict(labels)
        assert labelled.get("route", "default") in routes, labelled
        assert labelled.get("method", "GET") in METHODS | {"OTHER"}, labelled
        code = labelled.get("code", "200")
        assert (code.isdigit() and len(code) == 3) or code.endswith("xx"), labelled
        for text in labelled.values():
            assert token not in text and "198.51.100" not in text
    requests = [k for k in samples if k[0] == "keygate_requests_total"]
    assert len(requests) <= len(routes) * (len(METHODS) + 1) * 8
    assert len(samples) < 400


async def test_metrics_two_workers_report_the_totals_of_both(
    tmp_path: Path, upstream: Recorder
) -> None:
    """A real ``keygate serve`` with two workers: any worker's scrape counts both."""
    env = node_env(f"sqlite:///{tmp_path}/kg.db", KEYGATE_SERVER_WORKERS="2")
    for command in (("init", "--json"), ("keys", "create", "--group", "default", "--json")):
        done = run_keygate(*command, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    token = json.loads(done.stdout)["token"]
    node = await serve_node(tmp_path, env, upstream.url, workers=2)
    try:
        url = f"{node.url}/x"
        sent = 0

        async def both_served() -> bool:
            nonlocal sent
            assert await status_fresh(url, token) == 200
            sent += 1
            return len(node.access_pids()) == 2

        await wait_for(both_served, within=20, what="both workers to serve")

        async def totals() -> bool:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.get(f"{node.url}{METRICS}") as resp,
            ):
                samples = parse(await resp.text())
            counted = value(
                samples, "keygate_requests_total", route="default", method="GET", code="200"
            )
            return counted == sent and value(samples, "keygate_build_info", version=_version()) == 1

        for _ in range(4):  # several scrapes: whichever worker answers, the same totals
            await wait_for(totals, within=10, what="the totals of both workers")
        # Scrapes in quick succession land on both workers: each answer counts
        # itself in flight, and not the other worker's last scrape as well.
        for _ in range(12):
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.get(f"{node.url}{METRICS}") as resp,
            ):
                samples = parse(await resp.text())
            assert value(samples, "keygate_in_flight_requests") == 1
        # A worker killed outright: the supervisor marks it dead and starts another;
        # what it counted still counts (a counter never goes back).
        victim = min(node.access_pids())
        os.kill(victim, signal.SIGKILL)
        await wait_for(
            lambda: f"worker {victim} was killed" in node.stderr(),
            within=10,
            what="the supervisor to notice",
        )
        for _ in range(4):
            await wait_for(totals, within=10, what="the totals after a worker died")
    finally:
        assert node.stop() == 0
