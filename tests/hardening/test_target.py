"""Request target and SSRF (OWASP API5, API7): the client never picks the upstream,
what is checked is exactly what is forwarded, and the admin prefix has one way in."""

from __future__ import annotations

import pytest

from keygate.gateway.errors import BadPath
from keygate.gateway.request.pathnorm import is_under, normalise_path
from tests.support.gateway import Rig
from tests.support.raw import bearer, http


@pytest.fixture
async def narrow(rig: Rig) -> str:
    """A key that may GET /allowed/** and nothing else."""
    rule = {"route": "default", "methods": ["GET"], "paths": ["/allowed/**"]}
    await rig.kg.services.groups.create(
        await rig.kg.admin_actor(), {"name": "narrow", "rules": [rule]}
    )
    return await rig.key(["narrow"])


SSRF_TARGETS = [
    "//evil.example/x",
    "//evil.example:80/x",
    "///evil.example/x",
    "//127.0.0.1:1/x",
    "http://evil.example/x",
    "http://evil.example:8080/x?y=1",
    "https://evil.example/x",
    "HTTP://evil.example/x",
    "http://user:pw@evil.example/x",
    "http://evil.example",
]


@pytest.mark.parametrize("target", SSRF_TARGETS)
async def test_target_never_chooses_the_upstream(rig: Rig, token: str, target: str) -> None:
    reply = await rig.exchange(http("GET", target, [bearer(token)]))
    if reply.status != 200:
        assert reply.status == 400 and rig.up.seen == []
        return
    # It reached the one configured upstream, with a plain path.
    assert reply.header("X-Upstream") == "recorder"
    seen = rig.up.last()
    assert seen.path.startswith("/") and not seen.path.startswith("//")
    assert seen.values("Host") == [rig.up.url.removeprefix("http://")]


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Forwarded-Host", "evil.example")],
        [("X-Forwarded-Host", "127.0.0.1:1")],
        [("X-Host", "evil.example")],
        [("X-Original-URL", "/_keygate/api/v1/keys")],
        [("X-Rewrite-URL", "/_keygate/api/v1/keys")],
        [("Forwarded", "host=evil.example;proto=https")],
    ],
)
@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1:1", "[::1]:1", None])
async def test_target_host_headers_cannot_change_the_upstream(
    rig: Rig, token: str, headers: list[tuple[str, str]], host: str | None
) -> None:
    reply = await rig.exchange(http("GET", "/h", [bearer(token), *headers], host=host))
    if host is None:  # RFC 9112 §3.2: HTTP/1.1 without Host is a 400
        assert reply.status == 400 and rig.up.seen == []
        return
    assert reply.status == 200
    seen = rig.up.last()
    assert seen.path == "/h"
    assert seen.values("Host") == [rig.up.url.removeprefix("http://")]
    assert seen.values("X-Forwarded-Host") == ([host] if host else [])


PATH_TRICKS = [
    "/allowed/../secret",
    "/allowed/%2e%2e/secret",
    "/allowed/%2E%2e/secret",
    "/allowed/.%2e/secret",
    "/allowed/..;/secret",
    "/allowed;x/../secret",
    "/allowed/..%2fsecret",
    "/allowed/..%2Fsecret",
    "/allowed%2f..%2fsecret",
    "/allowed/..%5csecret",
    "/allowed\\..\\secret",
    "/allowed/%252e%252e/secret",
    "/Allowed/x",
    "/ALLOWED/x",
    "/allowed./x",
    "/allowed../x",
    "/allowed/x/../../secret",
    "/allowed%00/x",
    "/allowed/x%00",
    "/allowed/%c0%ae%c0%ae/secret",
    "/allowed/%ef%bc%8f..%ef%bc%8fsecret",
    "/secret/../allowed/x",
    "/secret;/allowed/x",
    "/secret#/allowed/x",
    "/allowedx/y",
    "/allowed//../secret",
    "/./allowed/../secret",
    "/allowed/./x",
    "/allowed/x/.",
    "/allowed/x/..",
    "/allowed/x.",
    "/allowed/x...",
    "/allowed/~x",
    "/allowed/%7Ex",
    "/allowed/%41",
]


@pytest.mark.parametrize("target", PATH_TRICKS)
async def test_target_checked_path_is_forwarded_path(rig: Rig, narrow: str, target: str) -> None:
    reply = await rig.exchange(http("GET", target, [bearer(narrow)]))
    if reply.status != 200:
        assert reply.status in (400, 403), reply.status
        assert rig.up.seen == []
        return
    seen = rig.up.last()
    assert is_under(seen.path, "/allowed") and seen.path != "/allowed"
    assert seen.path == normalise_path(target.partition("?")[0])
    assert normalise_path(seen.path) == seen.path
    assert ".." not in seen.path.split("/")


@pytest.mark.parametrize("target", PATH_TRICKS)
async def test_target_full_key_upstream_gets_the_normal_form(
    rig: Rig, token: str, target: str
) -> None:
    reply = await rig.exchange(http("GET", target, [bearer(token)]))
    try:
        expected = normalise_path(target.split("#")[0] if "#" not in target else target)
    except BadPath:
        expected = None
    if reply.status != 200:
        assert reply.status == 400 and rig.up.seen == []
        return
    assert expected is not None
    assert rig.up.last().path == expected


ADMIN_TRICKS_IN = [
    "/x/../_keygate/health",
    "/x/../_keygate/api/v1/me",
    "/x/%2e%2e/_keygate/api/v1/me",
    "/_keygate%2Fapi%2Fv1%2Fme",
    "/_keygate%2fhealth",
    "/%5Fkeygate/health",
    "/%5fkeygate/api/v1/me",
    "//_keygate/health",
    "//_keygate/api/v1/me",
    "/./_keygate/health",
    "/_keygate/./health",
    "/_keygate//health",
    "/_keygate;/health",
    "/_keygate;x=1/api/v1/me",
    "/_keygate\\health",
    "/_keygate%5Chealth",
    "/_keygate/api/v1/me/..",
    "/_keygate/api/v1/keys/../me",
    "/_keygate/api/v1/%6de",
    "http://evil.example/x/../_keygate/api/v1/me",
]


@pytest.mark.parametrize("target", ADMIN_TRICKS_IN)
async def test_target_path_trick_never_reaches_admin_app(rig: Rig, token: str, target: str) -> None:
    # The admin token would be welcome at the admin app: any 200 from it is a bypass.
    # (A 403 is the proxy's: the admin key holds no proxy rule for "/_keygate;/...".)
    reply = await rig.exchange(http("GET", target, [bearer(rig.kg.admin_token)]))
    assert reply.status in (400, 403, 404), (reply.status, reply.body[:200])
    assert reply.header("X-Upstream") is None
    assert rig.up.seen == []


ADMIN_LOOKALIKES = [
    "/_KEYGATE/health",
    "/_Keygate/api/v1/me",
    "/_keygate_/health",
    "/_keygatex/health",
    "/x/_keygate/health",
]


@pytest.mark.parametrize("target", ADMIN_LOOKALIKES)
async def test_target_admin_lookalike_is_proxied_not_admin(
    rig: Rig, token: str, target: str
) -> None:
    reply = await rig.exchange(http("GET", target, [bearer(token)]))
    assert reply.status == 200
    assert reply.header("X-Upstream") == "recorder"
    assert rig.up.last().path == target


ADMIN_TRICKS_OUT = [
    "/_keygate/../x",
    "/_keygate/%2e%2e/x",
    "/_keygate/api/../../x",
    "/_keygate/..;/x",
    "/_keygate/health/../../x",
]


@pytest.mark.parametrize("target", ADMIN_TRICKS_OUT)
async def test_target_trick_out_of_admin_prefix_is_consistent(
    rig: Rig, token: str, target: str
) -> None:
    reply = await rig.exchange(http("GET", target, [bearer(token)]))
    if reply.status == 200:
        # Proxied: then as exactly the path that was checked.
        assert reply.header("X-Upstream") == "recorder"
        assert rig.up.last().path == normalise_path(target)
    else:
        assert reply.status in (400, 404), reply.status
        assert rig.up.seen == []


async def test_target_admin_prefix_clean_path_is_admin(rig: Rig) -> None:
    reply = await rig.exchange(http("GET", "/_keygate/health", []))
    assert reply.status == 200 and reply.json() == {"status": "ok"}
    assert rig.up.seen == []


@pytest.mark.parametrize("method", ["CONNECT", "TRACE", "PROPFIND", "PURGE"])
async def test_target_odd_methods_never_open_tunnels(rig: Rig, token: str, method: str) -> None:
    target = "evil.example:443" if method == "CONNECT" else "/m"
    reply = await rig.exchange(http(method, target, [bearer(token)]))
    if method == "CONNECT":
        assert reply.status in (400, 405) and rig.up.seen == []
    else:
        assert reply.status == 200 and rig.up.last().method == method


@pytest.mark.parametrize(
    "hosts",
    [
        ["a.example", "b.example"],
        ["a.example", "a.example"],
        ["evil.example/path"],
        ["evil.example?x"],
        ["user@evil.example"],
        ["a b"],
        ["h:80:90"],
        ["evil.example\\x"],
    ],
    ids=["two", "two_same", "path", "query", "userinfo", "space", "two_ports", "backslash"],
)
async def test_target_bad_or_repeated_host_is_400(
    rig: Rig, token: str, hosts: list[str]
) -> None:
    headers = [bearer(token), *(("Host", h) for h in hosts)]
    reply = await rig.exchange(http("GET", "/h", headers, host=None))
    assert reply.status == 400 and reply.code == "bad_request"
    assert rig.up.seen == []


async def test_target_http10_without_host_is_served(rig: Rig, token: str) -> None:
    reply = await rig.exchange(http("GET", "/h10", [bearer(token)], host=None, version="HTTP/1.0"))
    assert reply.status == 200
    assert rig.up.last().values("X-Forwarded-Host") == []
