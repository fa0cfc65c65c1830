"""Hostile request targets through the real app, on raw sockets (docs/reference.md#the-proxy).

aiohttp's client would normalise most of these before sending, so every case
is written byte for byte with ``asyncio.open_connection``. The path keygate
checks must be exactly the path the upstream receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from tests.support.gateway import GatewayFactory, Keygate, default_route
from tests.support.raw import Reply, fetch, http
from tests.support.upstreams import Recorder, RecorderFactory


@dataclass
class Paths:
    kg: Keygate
    up: Recorder
    full: str  # every path
    narrow: str  # GET /allowed/** only

    async def get(self, target: str, token: str | None = None) -> Reply:
        headers = [("Connection", "close"), ("X-API-Key", token or self.full)]
        return await fetch(self.kg.port, http("GET", target, headers))


@pytest.fixture
async def paths(keygate_factory: GatewayFactory, recorder_factory: RecorderFactory) -> Paths:
    up = await recorder_factory("origin")
    kg = await keygate_factory(default_route(up.url))
    rule = {"route": "default", "methods": ["GET"], "paths": ["/allowed/**"]}
    await kg.services.groups.create(await kg.admin_actor(), {"name": "narrow", "rules": [rule]})
    return Paths(kg, up, await kg.make_key(["default"]), await kg.make_key(["narrow"]))


NORMALISED = [
    ("/a/../b", "/b"),
    ("/a/./b", "/a/b"),
    ("/a/b/..", "/a/"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E%2E/b", "/b"),
    ("/a/.%2e/b", "/b"),
    ("/a/%2e/b", "/a/b"),
    ("//a//b/", "/a/b/"),
    ("///a", "/a"),
    ("//evil.example/x", "/evil.example/x"),
    ("//evil.example:80/x", "/evil.example:80/x"),
    ("/%61b%63", "/abc"),
    ("/a%7eb%2D", "/a~b-"),
    ("/a%3ab", "/a%3Ab"),
    ("/a%20b", "/a%20b"),
    ("/a;b=c/d", "/a;b=c/d"),
]


@pytest.mark.parametrize(("target", "expected"), NORMALISED)
async def test_paths_normalised_path_is_exactly_what_upstream_gets(
    paths: Paths, target: str, expected: str
) -> None:
    resp = await paths.get(target)
    assert resp.status == 200, resp.body
    (seen,) = paths.up.seen
    assert seen.target == expected


async def test_paths_query_is_not_normalised(paths: Paths) -> None:
    resp = await paths.get("/a/../b?x=/../y&z=%2F%2e")
    assert resp.status == 200, resp.body
    (seen,) = paths.up.seen
    assert seen.target == "/b?x=/../y&z=%2F%2e"


BAD = [
    "/..",
    "/../x",
    "/a/../../x",
    "/%2e%2e/x",
    "/%2E%2E",
    "/.%2e/x",
    "/a%2Fb",
    "/a%2fb",
    "/a/..%2F..%2Fetc",
    "/a%5Cb",
    "/a%5cb",
    "/a\\b",
    "/a%00b",
    "/a%zzb",
    "/a%",
    "/a%4",
    "/..;/x",
    "/a/..;/x",
    "/a/.;/x",
]


@pytest.mark.parametrize("target", BAD)
async def test_paths_hostile_path_is_400_bad_path(paths: Paths, target: str) -> None:
    resp = await paths.get(target)
    assert resp.status == 400
    assert resp.code == "bad_path"
    assert paths.up.seen == []


# Refused by aiohttp's parser before keygate sees them; RFC 9112 targets are ASCII.
@pytest.mark.parametrize("target", ["/a\x00b", "/a b", "/a\x7fb", "/caf\xc3\xa9"])
async def test_paths_raw_control_bytes_never_reach_upstream(paths: Paths, target: str) -> None:
    resp = await paths.get(target)
    assert resp.status == 400
    assert paths.up.seen == []


# --- absolute-form targets (RFC 9112 §3.2.2) ----------------------------------------------
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://evil.example/x", "/x"),
        ("http://evil.example/x?q=1", "/x?q=1"),
        ("http://evil.example", "/"),
        ("http://evil.example:8080/a/../b", "/b"),
        ("https://evil.example/x", "/x"),
        ("HTTP://EVIL.EXAMPLE/x", "/x"),
        ("http://evil.example//other.example/x", "/other.example/x"),
        ("http://user:pw@evil.example/x", "/x"),
    ],
)
async def test_paths_absolute_form_goes_to_configured_upstream(
    paths: Paths, target: str, expected: str
) -> None:
    resp = await paths.get(target)
    assert resp.status == 200, resp.body
    assert resp.header("x-upstream") == "origin"
    (seen,) = paths.up.seen
    assert seen.target == expected
    host = dict((k.lower(), v) for k, v in seen.headers)["host"]
    assert "evil" not in host.lower()


@pytest.mark.parametrize(
    "target",
    ["http://evil.example/..", "http://evil.example/a%2Fb", "http://x/x/../_keygate/health"],
)
async def test_paths_absolute_form_is_normalised_like_any_path(paths: Paths, target: str) -> None:
    resp = await paths.get(target)
    assert resp.status == 400
    assert resp.code == "bad_path"
    assert paths.up.seen == []


async def test_paths_absolute_form_admin_path_is_admin_not_proxied(paths: Paths) -> None:
    resp = await paths.get("http://evil.example/_keygate/health")
    assert resp.status == 200
    assert orjson.loads(resp.body) == {"status": "ok"}
    assert paths.up.seen == []


@pytest.mark.parametrize("target", ["*", "evil.example:443", "ftp://evil.example/x"])
async def test_paths_non_path_target_is_refused(paths: Paths, target: str) -> None:
    resp = await paths.get(target)
    assert resp.status == 400
    assert paths.up.seen == []


# --- the admin prefix -------------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "/x/../_keygate/api/v1/me",
        "/x/../_keygate/health",
        "/x/%2e%2e/_keygate/health",
        "/_keygate/./health",
        "/_keygate/x/../health",
        "//_keygate/health",
        "/%5Fkeygate/health",
        "/_keygat%65/health",
        "/_keygate%2Fhealth",
    ],
)
async def test_paths_trick_into_admin_prefix_is_400(paths: Paths, target: str) -> None:
    resp = await paths.get(target)
    assert resp.status == 400
    assert resp.code == "bad_path"
    assert paths.up.seen == []


@pytest.mark.parametrize(
    "target", ["/_keygate/nope", "/_keygate", "/_keygate/", "/_keygate/api", "/_keygate/api/v1/x"]
)
@pytest.mark.parametrize("who", ["admin", "full", "nobody"])
async def test_paths_admin_prefix_is_never_proxied(paths: Paths, target: str, who: str) -> None:
    token = {"admin": paths.kg.admin_token, "full": paths.full, "nobody": "nope"}[who]
    resp = await paths.get(target, token)
    assert resp.status in (401, 403, 404)
    assert resp.code in ("invalid_api_key", "forbidden", "not_found")
    if who == "admin":
        assert resp.status == 404
    assert paths.up.seen == []


async def test_paths_admin_health_is_served_by_admin_app(paths: Paths) -> None:
    resp = await paths.get("/_keygate/health")
    assert resp.status == 200
    assert orjson.loads(resp.body) == {"status": "ok"}
    assert paths.up.seen == []


async def test_paths_admin_lookalike_is_proxied(paths: Paths) -> None:
    resp = await paths.get("/_keygatex/health")
    assert resp.status == 200
    assert paths.up.seen[0].target == "/_keygatex/health"


# --- the checked path is the forwarded path --------------------------------------------
@pytest.mark.parametrize(
    ("target", "status", "forwarded"),
    [
        ("/allowed/x", 200, "/allowed/x"),
        ("/allowed/../secret", 403, None),
        ("/allowed/%2e%2e/secret", 403, None),
        ("/allowed/./../secret/x", 403, None),
        ("//allowed/../secret", 403, None),
        ("/secret/../allowed/x", 200, "/allowed/x"),
        ("/secret/%2E%2E/allowed/x", 200, "/allowed/x"),
        ("/%61llowed/x", 200, "/allowed/x"),
        ("/allowed%2F..%2Fsecret", 400, None),
        ("http://evil.example/allowed/../secret", 403, None),
    ],
)
async def test_paths_policy_checks_the_forwarded_path(
    paths: Paths, target: str, status: int, forwarded: str | None
) -> None:
    resp = await paths.get(target, paths.narrow)
    assert resp.status == status, resp.body
    if forwarded is None:
        assert paths.up.seen == []
    else:
        (seen,) = paths.up.seen
        assert seen.target == forwarded
