"""Forward-auth (docs/forward-auth.md) on both front ends: who may ask, how the
original request is named, the answer's headers, nginx_compat, and the same
decision as proxy mode — case by case, and step by step."""

from __future__ import annotations

import functools
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from keygate.config.settings import Route
from keygate.gateway import forwardauth, pipeline
from keygate.gateway.service.imports import read
from keygate.gateway.service.imports.check import Defaults
from tests.support.gateway import GatewayFactory, Keygate, key_id
from tests.support.polling import wait_for
from tests.support.raw import Reply, bearer, connect, exchange, http
from tests.support.upstreams import Recorder

AUTH = "/_keygate/auth"
TRUSTED = {"trusted_proxies": ("127.0.0.1/32",)}


def routes(url: str) -> tuple[Route, ...]:
    return (
        Route(name="default", prefix="/", upstream=url),
        Route(name="pub", prefix="/pub", upstream=url, public=True),
    )


@pytest.fixture(params=["edge", "aiohttp"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "edge")


@pytest.fixture
def make(
    keygate_factory: GatewayFactory, upstream: Recorder, fast_path: bool
) -> Callable[..., Any]:
    async def start(**forward_auth: Any) -> Keygate:
        server = {"fast_path": fast_path, **TRUSTED}
        server.update(forward_auth.pop("server", {}))
        return await keygate_factory(
            routes(upstream.url), server=server, forward_auth={"enabled": True, **forward_auth}
        )

    return start


@pytest.fixture
async def kg(make: Callable[..., Any]) -> Keygate:
    return await make()  # type: ignore[no-any-return]


async def ask(
    kg: Keygate,
    uri: str,
    token: str | None = None,
    method: str = "GET",
    *,
    target: str = AUTH,
    style: str = "traefik",
    **extra: str,
) -> Reply:
    """Ask keygate about ``method uri`` as a proxy of ``style`` would."""
    headers: list[tuple[str, str]] = []
    if style == "traefik":
        headers += [("X-Forwarded-Method", method), ("X-Forwarded-Uri", uri)]
        headers += [("X-Forwarded-Host", "app.test"), ("X-Forwarded-Proto", "https")]
    elif style == "nginx":
        headers += [("X-Original-Method", method), ("X-Original-URI", uri)]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    headers += list(extra.items())
    return await exchange(kg.port, http(method if style == "envoy" else "GET", target, headers))


async def proxied(kg: Keygate, uri: str, token: str | None = None, method: str = "GET") -> Reply:
    headers = [("Authorization", f"Bearer {token}")] if token is not None else []
    return await exchange(kg.port, http(method, uri, headers), method=method)


# --- the answer -------------------------------------------------------------------------
async def test_forward_auth_allows_with_the_identity_headers(
    kg: Keygate, upstream: Recorder
) -> None:
    token = await kg.make_key(["default"], name="billing-sync")
    reply = await ask(kg, "/orders?x=1", token)
    assert reply.status == 200, reply.body
    assert reply.body == b""
    assert reply.header("X-Keygate-Key-Id") == key_id(token)
    assert reply.header("X-Keygate-Key-Name") == "billing-sync"
    assert reply.header("X-Keygate-User") == "admin"
    assert reply.header("X-Keygate-Groups") == "default"
    assert reply.header("Cache-Control") == "no-store"
    assert reply.header("X-Request-Id")
    assert upstream.seen == []  # keygate forwards nothing in this mode


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("é-ñame", "%C3%A9-%C3%B1ame"),
        ("%C3%A9-%C3%B1ame", "%25C3%25A9-%25C3%25B1ame"),  # not the same header as é-ñame
        ("😀 emoji", "%F0%9F%98%80 emoji"),
        ("100% sync", "100%25 sync"),
    ],
)
async def test_forward_auth_and_proxy_mode_percent_encode_names_alike(
    kg: Keygate, upstream: Recorder, name: str, header: str
) -> None:
    """A name outside printable ASCII, or holding "%", is RFC 3986 percent-encoded
    UTF-8 in X-Keygate-Key-Name, the same in both modes: one value, one name."""
    token = await kg.make_key(["default"], name=name)
    reply = await ask(kg, "/x", token)
    assert reply.status == 200, reply.body
    assert reply.header("X-Keygate-Key-Name") == header
    assert (await proxied(kg, "/x", token)).status == 200
    assert upstream.last().values("X-Keygate-Key-Name") == [header]
    assert urllib.parse.unquote(header) == name


async def test_forward_auth_public_route_has_the_four_headers_empty(kg: Keygate) -> None:
    reply = await ask(kg, "/pub/page", None, **{"X-Keygate-User": "forged"})
    assert reply.status == 200
    for name in ("X-Keygate-Key-Id", "X-Keygate-Key-Name", "X-Keygate-User", "X-Keygate-Groups"):
        assert reply.values(name) == [""], name


@pytest.mark.parametrize("style", ["traefik", "nginx", "envoy"])
async def test_forward_auth_reads_each_proxys_headers(kg: Keygate, style: str) -> None:
    actor = await kg.admin_actor()
    rule = {"route": "default", "methods": ["DELETE"], "paths": ["/items/*"]}
    await kg.services.groups.create(actor, {"name": "deleter", "rules": [rule]})
    token = await kg.make_key(["deleter"])
    target = AUTH + "/items/7" if style == "envoy" else AUTH
    allowed = await ask(kg, "/items/7", token, "DELETE", target=target, style=style)
    assert allowed.status == 200, allowed.body
    other = AUTH + "/items/7" if style == "envoy" else AUTH
    refused = await ask(kg, "/items/7", token, "GET", target=other, style=style)
    assert (refused.status, refused.code) == (403, "forbidden")


async def test_forward_auth_refuses_an_untrusted_peer(make: Callable[..., Any]) -> None:
    kg = await make(server={"trusted_proxies": ("10.0.0.0/8",)})
    token = await kg.make_key(["default"])
    reply = await ask(kg, "/x", token)
    assert (reply.status, reply.code) == (403, "untrusted_proxy")
    assert reply.header("X-Keygate-User") is None


async def test_forward_auth_is_off_by_default(
    keygate_factory: GatewayFactory, upstream: Recorder, fast_path: bool
) -> None:
    kg = await keygate_factory(routes(upstream.url), server={"fast_path": fast_path, **TRUSTED})
    token = await kg.make_key(["default"])
    reply = await ask(kg, "/x", token)
    assert (reply.status, reply.code) == (404, "not_found")


async def test_forward_auth_without_a_named_request_is_400(kg: Keygate) -> None:
    reply = await exchange(kg.port, http("GET", AUTH, [("X-Forwarded-Method", "GET")]))
    assert (reply.status, reply.code) == (400, "bad_request")
    get = ("X-Forwarded-Method", "GET")
    twice = await exchange(
        kg.port, http("GET", AUTH, [get, ("X-Forwarded-Uri", "/a"), ("X-Forwarded-Uri", "/b")])
    )
    assert (twice.status, twice.code) == (400, "bad_request")
    both = await exchange(
        kg.port, http("GET", AUTH, [get, ("X-Forwarded-Uri", "/a"), ("X-Original-URI", "/b")])
    )
    assert (both.status, both.code) == (400, "bad_request")
    tail_too = await exchange(
        kg.port, http("GET", AUTH + "/a", [("X-Original-Method", "GET"), ("X-Original-URI", "/b")])
    )
    assert (tail_too.status, tail_too.code) == (400, "bad_request")


@pytest.mark.parametrize(
    ("uri", "method"),
    [("X-Original-URI", "X-Original-Method"), ("X-Forwarded-Uri", "X-Forwarded-Method")],
)
async def test_forward_auth_a_uri_header_without_its_method_is_400(
    kg: Keygate, uri: str, method: str
) -> None:
    """Not the auth request's own method (a GET from most proxies): a proxy that
    forgets the method header would have every DELETE judged as a GET."""
    token = await kg.make_key(["default"])
    reply = await exchange(kg.port, http("GET", AUTH, [(uri, "/x"), bearer(token)]))
    assert (reply.status, reply.code) == (400, "bad_request")
    assert "method" in reply.json()["error"]["message"]
    named = await exchange(
        kg.port, http("GET", AUTH, [(uri, "/x"), (method, "GET"), bearer(token)])
    )
    assert named.status == 200
    # Envoy's form has no method header: the auth request's own method is the original's.
    envoy = await exchange(kg.port, http("DELETE", AUTH + "/x", [bearer(token)]))
    assert envoy.status == 200


@pytest.mark.parametrize("compat", [False, True])
async def test_forward_auth_refuses_what_no_http_parser_takes(
    make: Callable[..., Any], compat: bool
) -> None:
    """A method or target proxy mode's parsers refuse (400) is refused, not judged."""
    kg = await make(nginx_compat=compat)
    token = await kg.make_key(["default"])
    for method, uri in [
        ("get", "/x"),
        ("Get", "/x"),
        ("BREW", "/x"),
        ("GET", "/x/\xe9"),
        ("GET", "/x/\xc3\xa9"),  # UTF-8 é, raw
        ("GET", "/x/1 HTTP/1.1"),
        ("GET", "/x/ /../y"),
        ("GET", "/x/\t1"),
    ]:
        for style in ("traefik", "nginx"):
            reply = await ask(kg, uri, token, method, style=style)
            expected = (403, "bad_request") if compat else (400, "bad_request")
            assert (reply.status, reply.code) == expected, (method, uri, style, reply.body)
            assert reply.header("X-Keygate-User") is None
    # Every method proxy mode's parsers take is judged (and taken by them).
    for method in sorted(forwardauth.HTTP_METHODS - {"CONNECT"}):
        assert (await ask(kg, "/x", token, method)).status == 200, method
        assert (await proxied(kg, "/x", token, method)).status != 400, method


async def test_forward_auth_401_carries_www_authenticate(kg: Keygate) -> None:
    reply = await ask(kg, "/x")
    assert (reply.status, reply.code) == (401, "missing_api_key")
    assert reply.header("WWW-Authenticate") == 'Bearer realm="keygate"'
    assert reply.header("Cache-Control") == "no-store"


@pytest.mark.parametrize("compat", [False, True])
async def test_forward_auth_counts_rate_limits_and_nginx_compat_turns_429_into_403(
    make: Callable[..., Any], compat: bool
) -> None:
    limits = [{"name": "hourly", "limit": 1, "window": 3600}]
    kg = await make(nginx_compat=compat)
    token = await kg.make_key(["default"], rate_limits=limits)
    first = await ask(kg, "/x", token)
    assert first.status == 200
    assert first.header("RateLimit-Policy") == '"hourly";q=1;w=3600'
    second = await ask(kg, "/x", token)
    assert second.code == "rate_limited"
    assert 3590 <= int(second.header("Retry-After") or 0) <= 3600
    assert second.header("RateLimit-Policy") == '"hourly";q=1;w=3600'
    if compat:
        assert second.status == 403
        assert second.header("X-Keygate-Error") == "rate_limited"
    else:
        assert second.status == 429
        assert second.header("X-Keygate-Error") is None


async def test_forward_auth_nginx_compat_maps_other_client_refusals(
    make: Callable[..., Any],
) -> None:
    kg = await make(nginx_compat=True)
    reply = await ask(kg, "/a/%2e%2e/%2e%2e/x", style="nginx")
    assert (reply.status, reply.code) == (403, "bad_path")
    assert reply.header("X-Keygate-Error") == "bad_path"
    missing = await ask(kg, "/x", style="nginx")
    assert (missing.status, missing.header("X-Keygate-Error")) == (401, None)


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("what", ["header-count", "header-size"])
async def test_forward_auth_nginx_compat_covers_the_parsers_431(
    make: Callable[..., Any], compat: bool, what: str
) -> None:
    """Headers too large are refused by the HTTP parser before any routing; for
    the auth endpoint nginx_compat still applies (nginx would make a 431 a 500)."""
    kg = await make(nginx_compat=compat)
    token = await kg.make_key(["default"])
    named = [("X-Original-Method", "GET"), bearer(token)]
    if what == "header-count":
        big = [*named, ("X-Original-URI", "/x"), *((f"X-H{i}", "v") for i in range(120))]
    else:
        big = [*named, ("X-Original-URI", "/x/" + "a" * 60_000)]
    reply = await exchange(kg.port, http("GET", AUTH, big))
    assert reply.code == "headers_too_large"
    assert reply.header("Cache-Control") == "no-store"
    if compat:
        assert reply.status == 403
        assert reply.header("X-Keygate-Error") == "headers_too_large"
    else:
        assert (reply.status, reply.header("X-Keygate-Error")) == (431, None)
    assert reply.header("X-Keygate-User") is None
    # Another path keeps the parser's own status; so does one after a valid
    # request in the same read (the refused one is told apart).
    other = await exchange(kg.port, http("GET", "/x", big[1:]))
    assert (other.status, other.code) == (431, "headers_too_large")
    async with connect(kg.port) as proxy:
        good = http("GET", AUTH, [*named, ("X-Original-URI", "/x")])
        await proxy.send(good + http("GET", "/x", big[1:]))
        assert (await proxy.reply()).status == 200
        assert (await proxy.reply()).status == 431


async def test_forward_auth_allowed_ips_judge_the_client_behind_the_proxy(kg: Keygate) -> None:
    token = await kg.make_key(["default"], allowed_ips=["198.51.100.0/24"])
    inside = await ask(kg, "/x", token, **{"X-Forwarded-For": "198.51.100.7"})
    assert inside.status == 200
    outside = await ask(kg, "/x", token, **{"X-Forwarded-For": "203.0.113.9"})
    assert (outside.status, outside.code) == (403, "ip_not_allowed")


async def test_forward_auth_refuses_a_body_override_it_cannot_see(kg: Keygate) -> None:
    actor = await kg.admin_actor()
    rule = {"route": "default", "methods": ["GET", "POST"], "paths": ["/**"]}
    await kg.services.groups.create(actor, {"name": "poster", "rules": [rule]})
    token = await kg.make_key(["poster"])
    assert (await ask(kg, "/form", token, "GET")).status == 200
    refused = await ask(kg, "/form", token, "POST")
    assert (refused.status, refused.code) == (403, "forbidden")
    overridden = await ask(kg, "/form?_method=DELETE", token, "GET")
    assert (overridden.status, overridden.code) == (403, "forbidden")


async def test_forward_auth_stamps_last_used(kg: Keygate) -> None:
    token = await kg.make_key(["default"])
    assert (await ask(kg, "/x", token)).status == 200

    async def stamped() -> bool:
        record = await kg.gw.store.get_key(key_id(token))
        return record is not None and record.last_used_at is not None

    await wait_for(stamped, within=5, what="last_used_at to be stamped")


# --- the same decision as proxy mode ------------------------------------------------------
# (method, path, which key): the proxy's answer and forward-auth's must agree.
CASES = [
    ("GET", "/orders", "valid"),
    ("GET", "/orders", "none"),
    ("GET", "/orders", "garbage"),
    ("GET", "/orders", "disabled"),
    ("GET", "/orders", "reader"),
    ("DELETE", "/orders/1", "reader"),
    ("HEAD", "/orders/1", "reader"),
    ("GET", "/secret/x", "reader"),
    ("GET", "/orders/../secret/x", "reader"),
    ("GET", "/orders/%2e%2e/secret/x", "reader"),
    ("GET", "/orders//1", "reader"),
    ("GET", "/orders/%2e%2e/%2e%2e/x", "reader"),
    ("GET", "/orders/a%2Fb", "reader"),
    ("GET", "/orders/%00", "reader"),
    ("GET", "/orders?_method=DELETE", "reader"),
    ("GET", "/pub/x", "none"),
    ("GET", "/orders?api_key=1", "valid"),
    # What proxy mode's parsers refuse (400) or proxy mode does not forward (405).
    ("get", "/orders", "valid"),
    ("FOO", "/orders", "valid"),
    ("CONNECT", "/pub/x", "none"),
    ("CONNECT", "/orders", "valid"),
    ("CONNECT", "/orders", "reader"),
    ("CONNECT", "/orders", "none"),
    ("GET", "/orders/\xe9", "reader"),
    ("GET", "/orders/1 HTTP/1.1", "reader"),
    ("GET", "/orders/ /../secret", "reader"),
    ("GET", "/orders/\t1", "reader"),
]


@pytest.mark.parametrize(("method", "path", "who"), CASES)
async def test_forward_auth_decides_as_proxy_mode(
    kg: Keygate, method: str, path: str, who: str
) -> None:
    actor = await kg.admin_actor()
    rule = {"route": "default", "methods": ["GET"], "paths": ["/orders/**"]}
    await kg.services.groups.create(actor, {"name": "reader", "rules": [rule]})
    tokens: dict[str, str | None] = {
        "valid": await kg.make_key(["default"]),
        "reader": await kg.make_key(["reader"]),
        "none": None,
        "garbage": "kg_notakey",
    }
    disabled = await kg.make_key(["default"])
    await kg.services.keys.update(actor, key_id(disabled), {"status": "disabled"})
    tokens["disabled"] = disabled
    token = tokens[who]
    proxy = await proxied(kg, path, token, method)
    auth = await ask(kg, path, token, method)
    decided = 200 if proxy.status < 300 else proxy.status
    assert auth.status == decided, (proxy.status, auth.body)
    if proxy.status >= 400 and method != "HEAD":
        assert auth.code == proxy.code


async def test_forward_auth_never_allows_the_admin_prefix(kg: Keygate) -> None:
    """Never proxied, so never allowed to be forwarded either."""
    token = await kg.make_key(["default"])
    assert (await ask(kg, "/_keygate/api/v1/me", token)).code == "not_found"
    assert (await ask(kg, "/x/../_keygate/api/v1/me", token)).code == "bad_path"


# Steps that are about forwarding, which the asking proxy does itself.
FORWARDING_STEPS = {"check_room", "upstream_target", "upstream_pairs", "admin_bound"}


async def test_forward_auth_runs_every_decision_step_proxy_mode_runs(
    kg: Keygate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step added to proxy mode (pipeline.py) and not to forward-auth fails here."""
    called: list[str] = []
    for name in dir(pipeline):
        step = getattr(pipeline, name)
        if callable(step) and getattr(step, "__module__", "") == pipeline.__name__:
            if isinstance(step, type):
                continue

            def spy(*args: Any, __step: Any = step, __name: str = name, **kw: Any) -> Any:
                called.append(__name)
                return __step(*args, **kw)

            monkeypatch.setattr(pipeline, name, functools.wraps(step)(spy))
    limits = {
        "rate_limits": [{"name": "m", "limit": 100, "window": 60}],
        "allowed_ips": ["127.0.0.0/8"],
        "quota": {"limit": 100, "period": "day"},
    }
    steps: dict[str, set[str]] = {}
    for mode in ("proxy", "auth"):
        token = await kg.make_key(["default"], **limits)  # a miss, then a hit
        called.clear()
        for _ in range(2):
            reply = await (proxied(kg, "/x", token) if mode == "proxy" else ask(kg, "/x", token))
            assert reply.status == 200
        steps[mode] = set(called)
    needed = steps["proxy"] - FORWARDING_STEPS
    assert {"resolve", "admit_cached", "admit", "authorise", "check_address"} <= needed
    assert needed <= steps["auth"], needed - steps["auth"]


async def test_forward_auth_401_never_holds_the_proxys_connection(
    keygate_factory: GatewayFactory, upstream: Recorder
) -> None:
    """One client's 401 must not delay the other clients' questions on the proxy's
    keep-alive connection (auth.refusal_delay is for proxy-mode clients)."""
    kg = await keygate_factory(
        routes(upstream.url),
        server=TRUSTED,
        forward_auth={"enabled": True},
        refusal_delay=9.0,  # applied, the second answer would time out
    )
    token = await kg.make_key(["default"])
    async with connect(kg.port) as busy:
        await busy.send(http("GET", "/_up/hold", [("Authorization", f"Bearer {token}")]))
        await wait_for(lambda: upstream.holding == 1, within=5, what="the held request")
        named = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/x")]
        refused = http("GET", AUTH, named)
        allowed = http("GET", AUTH, [*named, ("Authorization", f"Bearer {token}")])
        async with connect(kg.port) as proxy:
            await proxy.send(refused + allowed)
            assert (await proxy.reply(within=3.0)).status == 401
            assert (await proxy.reply(within=3.0)).status == 200
        upstream.release.set()
        assert (await busy.reply()).status == 200


async def test_forward_auth_access_line_names_the_route_and_key(
    kg: Keygate, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused or not, the line names the route judged (and the key once known)."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    token = await kg.make_key(["default"])
    assert (await ask(kg, "/pub/x")).status == 200
    assert (await ask(kg, "/x")).status == 401  # refused while the route was resolved
    assert (await ask(kg, "/x", token)).status == 200
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "aiohttp.access" and r.getMessage().startswith("method=")
    ]
    assert len(lines) == 3, lines
    assert "path=/_keygate/auth status=200" in lines[0] and "route=pub" in lines[0]
    assert "status=401" in lines[1] and "route=default" in lines[1] and "key_id=-" in lines[1]
    assert f"key_id={key_id(token)} route=default" in lines[2]


async def test_forward_auth_imported_key_as_its_client_sends_it(kg: Keygate) -> None:
    """An imported key (docs/reference.md#imported-keys) is judged like any other;
    an unknown token of another format is refused."""
    found = read(b'{"key": "legacy-partner-key-7f3a", "name": "partner"}\n', "json")
    report = await kg.services.imports.run(
        kg.actor(), found.entries, defaults=Defaults(owner="admin", groups=("default",))
    )
    assert report.imported == 1
    reply = await ask(kg, "/orders", "legacy-partner-key-7f3a")
    assert reply.status == 200, reply.body
    assert reply.header("X-Keygate-Key-Name") == "partner"
    assert (await ask(kg, "/orders", "legacy-partner-key-0000")).status == 401
