"""Rate limits, quotas and IP allowlists at the proxy, on both front ends
(docs/reference.md#rate-limits-quotas-and-ip-allowlists): the order of the
checks, the 403s and 429s, the RateLimit fields, the client address through
trusted proxies, and the key fields in the admin API."""

from __future__ import annotations

from typing import Any

import pytest

from keygate.gateway.limits import notices
from tests.support.admin import AdminApi, ApiReply, make_member
from tests.support.gateway import GatewayFactory, Keygate, default_route, key_id
from tests.support.polling import wait_for
from tests.support.upstreams import Recorder

HOURLY = [{"name": "hourly", "limit": 2, "window": 3600}]
NOT_CIDR = "not an IP address or network (CIDR)"


@pytest.fixture(params=["edge", "aiohttp"])
def front(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Both front ends: the edge (fast_path) and aiohttp's server."""
    return {"fast_path": request.param == "edge"}


@pytest.fixture
async def kg(keygate_factory: GatewayFactory, upstream: Recorder, front: dict[str, Any]) -> Keygate:
    return await keygate_factory(default_route(upstream.url), server=front)


async def get(kg: Keygate, token: str, path: str = "/x", **headers: str) -> ApiReply:
    async with kg.client.get(path, headers={**kg.bearer(token), **headers}) as resp:
        return ApiReply(resp.status, resp.headers, await resp.read())


def heard(kg: Keygate) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    kg.gw.notice = lambda event, key: events.append((event, key))
    return events


# --- rate limits ----------------------------------------------------------------------
async def test_rate_limit_allows_the_burst_then_429s(kg: Keygate, upstream: Recorder) -> None:
    token = await kg.make_key(["default"], rate_limits=HOURLY)
    events = heard(kg)
    first, second, third = [await get(kg, token) for _ in range(3)]
    assert (first.status, second.status, third.status) == (200, 200, 429)
    assert len(upstream.seen) == 2  # the refused one never left
    assert first.headers["RateLimit-Policy"] == '"hourly";q=2;w=3600'
    assert first.headers["RateLimit"] == '"hourly";r=1;t=1800'
    assert second.headers["RateLimit"] == '"hourly";r=0;t=3600'
    assert third.json == {
        "error": {
            "code": "rate_limited",
            "message": "Too many requests for this API key; retry later.",
            "details": {"violated_policies": ["hourly"]},
        }
    }
    assert 1795 <= int(third.headers["Retry-After"]) <= 1800
    assert third.headers["RateLimit-Policy"] == '"hourly";q=2;w=3600'
    assert third.headers["RateLimit"].startswith('"hourly";r=0;t=')
    assert third.headers["X-Request-Id"]
    assert events == [(notices.RATE_LIMITED, key_id(token))]


async def test_quota_429s_when_used_up_and_counts_reach_the_record(kg: Keygate) -> None:
    token = await kg.make_key(["default"], quota={"limit": 2, "period": "day"})
    events = heard(kg)
    statuses = [(await get(kg, token)).status for _ in range(2)]
    refused = await get(kg, token)
    assert statuses == [200, 200] and refused.status == 429
    assert refused.json["error"]["code"] == "quota_exceeded"
    assert refused.json["error"]["details"] == {"violated_policies": ["quota"]}
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    assert refused.headers["RateLimit-Policy"] == '"quota";q=2;w=86400'
    assert events == [(notices.QUOTA_EXCEEDED, key_id(token))]
    api = AdminApi(kg)

    async def counted() -> bool:
        record = (await api.get(f"/keys/{key_id(token)}", api.admin)).json
        return record["quota_used"] == 2

    await wait_for(counted, within=5, what="the quota count to reach the store")


async def test_refused_before_the_limits_consumes_nothing(kg: Keygate) -> None:
    """Order: allowed_ips, group rules, then rate limits (only what passes counts)."""
    actor = await kg.admin_actor()
    rule = {"route": "*", "methods": ["GET"], "paths": ["/open/**"]}
    await kg.services.groups.create(actor, {"name": "open", "rules": [rule]})
    token = await kg.make_key(["open"], rate_limits=[{"name": "one", "limit": 1, "window": 600}])
    forbidden = await get(kg, token, "/closed")
    assert forbidden.status == 403 and forbidden.json["error"]["code"] == "forbidden"
    assert "RateLimit" not in forbidden.headers  # refused before counting: nothing to tell
    assert (await get(kg, token, "/open/a")).status == 200
    assert (await get(kg, token, "/open/a")).status == 429


async def test_ip_not_allowed_comes_before_the_group_rules(kg: Keygate) -> None:
    actor = await kg.admin_actor()
    await kg.services.groups.create(actor, {"name": "nothing", "rules": []})
    token = await kg.make_key(["nothing"], allowed_ips=["192.0.2.0/24"], rate_limits=HOURLY)
    events = heard(kg)
    refused = await get(kg, token)
    assert refused.status == 403
    assert refused.json["error"] == {
        "code": "ip_not_allowed",
        "message": "The API key may not be used from this address.",
    }
    assert "RateLimit-Policy" not in refused.headers
    assert events == [(notices.IP_DENIED, key_id(token))]


@pytest.mark.parametrize(
    ("allowed", "status"),
    [
        (["127.0.0.1"], 200),
        (["127.0.0.0/8", "2001:db8::/32"], 200),
        (["::ffff:127.0.0.1"], 200),  # stored as 127.0.0.1/32
        (["::1"], 403),
        (["10.0.0.0/8"], 403),
        ([], 200),
    ],
)
async def test_allowed_ips_against_the_peer(kg: Keygate, allowed: list[str], status: int) -> None:
    token = await kg.make_key(["default"], allowed_ips=allowed)
    reply = await get(kg, token)
    assert reply.status == status, reply.raw
    assert "RateLimit" not in reply.headers  # no rate limit or quota: no fields


async def test_untrusted_peer_spoofing_x_forwarded_for_is_ignored(kg: Keygate) -> None:
    token = await kg.make_key(["default"], allowed_ips=["198.51.100.0/24"])
    assert (await get(kg, token, **{"X-Forwarded-For": "198.51.100.7"})).status == 403


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        ("198.51.100.7", 200),
        ("203.0.113.9, 198.51.100.7", 200),  # whatever a client put left of it
        ("198.51.100.7, 203.0.113.9", 403),  # the rightmost untrusted hop is the client
        ("198.51.100.7, 127.0.0.2", 200),  # trusted hops are skipped
        ("198.51.100.7:4711", 200),
        ("[::ffff:198.51.100.7]:80", 200),
        ("198.51.100.7, nonsense", 403),  # the walk stops at the proxy: 127.0.0.1
        (None, 403),  # the trusted peer itself
    ],
)
async def test_allowed_ips_through_trusted_proxies(
    keygate_factory: GatewayFactory,
    upstream: Recorder,
    front: dict[str, Any],
    forwarded: str | None,
    status: int,
) -> None:
    kg = await keygate_factory(
        default_route(upstream.url), server={**front, "trusted_proxies": _nets("127.0.0.0/8")}
    )
    token = await kg.make_key(["default"], allowed_ips=["198.51.100.0/24"])
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    assert (await get(kg, token, **headers)).status == status


def _nets(*cidrs: str) -> tuple[Any, ...]:
    import ipaddress

    return tuple(ipaddress.ip_network(c) for c in cidrs)


# --- header fields --------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["draft", "legacy", "both", "none"])
async def test_header_modes_on_forwarded_answers(
    keygate_factory: GatewayFactory, upstream: Recorder, front: dict[str, Any], mode: str
) -> None:
    kg = await keygate_factory(
        default_route(upstream.url), server=front, ratelimit={"headers": mode}
    )
    token = await kg.make_key(["default"], rate_limits=[{"name": "m", "limit": 5, "window": 60}])
    reply = await get(kg, token)
    names = {n.lower() for n in reply.headers}
    assert ("ratelimit" in names) is (mode in ("draft", "both"))
    assert ("x-ratelimit-remaining" in names) is (mode in ("legacy", "both"))
    if mode in ("legacy", "both"):
        assert reply.headers["X-RateLimit-Limit"] == "5"
        assert reply.headers["X-RateLimit-Remaining"] == "4"
        assert reply.headers["X-RateLimit-Reset"] == "12"


async def test_keys_without_limits_get_no_fields(kg: Keygate) -> None:
    token = await kg.make_key(["default"])
    reply = await get(kg, token)
    assert reply.status == 200
    assert not {n.lower() for n in reply.headers} & {"ratelimit", "ratelimit-policy"}


async def test_limits_changed_through_the_api_apply_at_once(kg: Keygate) -> None:
    api = AdminApi(kg)
    token = await kg.make_key(["default"])
    assert (await get(kg, token)).status == 200
    changed = await api.patch(f"/keys/{key_id(token)}", api.admin, {"rate_limits": HOURLY})
    assert changed.status == 200, changed.raw
    assert (await get(kg, token)).headers["RateLimit-Policy"] == '"hourly";q=2;w=3600'
    await api.patch(f"/keys/{key_id(token)}", api.admin, {"allowed_ips": ["192.0.2.1"]})
    assert (await get(kg, token)).status == 403
    await api.patch(
        f"/keys/{key_id(token)}", api.admin, {"allowed_ips": [], "rate_limits": [], "quota": None}
    )
    reply = await get(kg, token)
    assert reply.status == 200 and "RateLimit-Policy" not in reply.headers


# --- the admin API --------------------------------------------------------------------
async def test_admin_api_stores_the_fields_normalised(keygate: Keygate) -> None:
    api = AdminApi(keygate)
    body = {
        "groups": ["default"],
        "rate_limits": [
            {"name": "burst", "limit": 100, "window": 60, "burst": None},
            {"name": "daily", "limit": 5000.0, "window": 86400, "burst": 10},
        ],
        "quota": {"limit": 100000, "period": "month"},
        "allowed_ips": ["2001:DB8::1/32", "10.1.2.3/8", "::ffff:192.0.2.7", "10.0.0.0/8"],
    }
    created = await api.post("/keys", api.admin, body)
    assert created.status == 201, created.raw
    key = created.json["key"]
    assert key["rate_limits"] == [
        {"name": "burst", "limit": 100, "window": 60, "burst": None},
        {"name": "daily", "limit": 5000, "window": 86400, "burst": 10},
    ]
    assert key["quota"] == {"limit": 100000, "period": "month"}
    assert key["quota_used"] == 0
    assert key["quota_resets_at"].endswith("-01T00:00:00Z")
    assert key["allowed_ips"] == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    shown = await api.get(f"/keys/{key['id']}", api.admin)
    assert {k: shown.json[k] for k in body if k != "groups"} == {
        k: key[k] for k in body if k != "groups"
    }


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("rate_limits", "fast", "must be a list of at most 5 rate limits"),
        ("rate_limits", [{"name": "a", "limit": 1, "window": 1}] * 6,
         "must hold at most 5 rate limits"),
        ("rate_limits", [{"name": "a", "limit": 0, "window": 1}],
         "item 1: limit must be an integer from 1 to 1000000000"),
        ("rate_limits", [{"name": "A", "limit": 1, "window": 1}],
         "item 1: name must be a name of 1-64 lower-case letters, digits, '_' or '-'"),
        ("rate_limits", [{"name": "a", "limit": 1, "window": 1}, {"name": "b", "limit": 1}],
         "item 2: window is required"),
        ("rate_limits", [{"name": "a", "limit": 1, "window": 1, "per": "s"}],
         "item 1: unknown field 'per'"),
        ("rate_limits", [{"name": "quota", "limit": 1, "window": 1}],
         "'quota' names the quota: give the rate limit another name"),
        ("rate_limits", [{"name": "a", "limit": 1, "window": 1}] * 2, "names 'a' twice"),
        ("rate_limits", [{"name": "a", "limit": 1, "window": 1, "burst": 0}],
         "item 1: burst must be an integer from 1 to 1000000000, or null"),
        ("quota", {"limit": 10, "period": "week"}, "period must be one of day, month"),
        ("quota", {"limit": -1, "period": "day"},
         "limit must be an integer from 1 to 1000000000000"),
        ("quota", 100, "must be an object with limit and period, or null"),
        ("allowed_ips", ["10.0.0.0/33"], f"item 1: {NOT_CIDR} ('10.0.0.0/33')"),
        ("allowed_ips", ["example.com"], f"item 1: {NOT_CIDR} ('example.com')"),
        ("allowed_ips", "10.0.0.0/8", "must be a list of at most 100 IP networks (CIDR)"),
        ("allowed_ips", [f"10.0.0.{i}" for i in range(101)], "must hold at most 100 networks"),
    ],
)
async def test_admin_api_refuses_bad_limits_with_details(
    keygate: Keygate, field: str, value: Any, reason: str
) -> None:
    api = AdminApi(keygate)
    created = await api.post("/keys", api.admin, {"groups": ["default"], field: value})
    assert created.status == 422, created.raw
    assert created.details == {field: reason}
    token = await keygate.make_key(["default"])
    patched = await api.patch(f"/keys/{key_id(token)}", api.admin, {field: value})
    assert patched.status == 422 and patched.details == {field: reason}


async def test_only_admins_set_limits(keygate: Keygate) -> None:
    api = AdminApi(keygate)
    alice = await make_member(api, "alice")
    created = await api.post(
        "/keys", alice.token, {"groups": ["default"], "rate_limits": [], "allowed_ips": []}
    )
    assert created.status == 201, created.raw  # none is what every key may have
    own = created.json["key"]["id"]
    refused = await api.post(
        "/keys", alice.token, {"groups": ["default"], "quota": {"limit": 1, "period": "day"}}
    )
    assert refused.status == 403 and refused.code == "forbidden"
    for body in ({"rate_limits": []}, {"allowed_ips": ["10.0.0.0/8"]}, {"quota": None}):
        patched = await api.patch(f"/keys/{own}", alice.token, body)
        assert patched.status == 403, (body, patched.raw)
        assert patched.json["error"]["message"] == (
            "Only an admin may set a key's rate limits, quota or allowed IPs."
        )


async def test_admin_api_refuses_a_key_used_from_elsewhere(keygate: Keygate) -> None:
    api = AdminApi(keygate)
    token = await keygate.make_key(["admin"], allowed_ips=["192.0.2.0/24"])
    refused = await api.get("/me", token)
    assert refused.status == 403 and refused.code == "ip_not_allowed"
    allowed = await keygate.make_key(["admin"], allowed_ips=["127.0.0.1"], rate_limits=HOURLY)
    for _ in range(3):  # rate limits count proxied requests only
        assert (await api.get("/me", allowed)).status == 200


async def test_audit_records_the_limits_set(keygate: Keygate) -> None:
    api = AdminApi(keygate)
    token = await keygate.make_key(["default"])
    await api.patch(f"/keys/{key_id(token)}", api.admin, {"allowed_ips": ["10.9.9.9/8"]})
    entries = (await api.get("/audit", api.admin)).json["items"]
    assert entries[0]["changes"] == {"allowed_ips": ["10.0.0.0/8"]}
