"""Every proxy status with the request that causes it, and what the upstream received.

The contract is docs/reference.md#status-codes-and-errors.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientResponse
from multidict import CIMultiDict

from keygate.config.settings import Route
from keygate.gateway.auth import keyformat
from keygate.gateway.store.records import AuditEntry
from tests.support.gateway import GatewayFactory, Keygate, default_route, key_id
from tests.support.polling import wait_for
from tests.support.raw import fetch, free_port, http
from tests.support.upstreams import Recorder, RecorderFactory, header_values

REALM = 'Bearer realm="keygate"'


@dataclass
class Proxy:
    kg: Keygate
    up: Recorder
    tokens: dict[str, str]
    slow: Recorder  # holds every request


@pytest.fixture
async def proxy(
    keygate_factory: GatewayFactory,
    recorder_factory: RecorderFactory,
) -> Proxy:
    """Routes without "/": a normal, a public, a dead and a slow upstream, and one key
    for every state a key can be in."""
    up, slow = await recorder_factory("a"), await recorder_factory("slow")
    routes = (
        Route(name="api", prefix="/api", upstream=up.url),
        Route(name="pub", prefix="/pub", upstream=up.url, public=True),
        Route(name="down", prefix="/down", upstream=f"http://127.0.0.1:{free_port()}"),
        Route(name="slow", prefix="/slow", upstream=slow.at("/_up/hold"), timeout=0.5),
    )
    kg = await keygate_factory(routes)
    actor = await kg.admin_actor()
    rule = {"route": "api", "methods": ["GET"], "paths": ["/api/allowed/**"]}
    await kg.services.groups.create(actor, {"name": "reader", "rules": [rule]})
    tokens = {
        "all": await kg.make_key(["default"]),
        "other": await kg.make_key(["default"]),
        "reader": await kg.make_key(["reader"]),
        "disabled": await kg.make_key(["default"]),
        "expired": await kg.make_key(["default"]),
        "unknown": keyformat.generate("kg")[0],
    }
    await kg.services.keys.set_status(actor, key_id(tokens["disabled"]), "disabled")
    # The services refuse a past expiry; the store writes it as time would have.
    await kg.gw.store.update_key(
        key_id(tokens["expired"]),
        {"expires_at": datetime.now(UTC) - timedelta(seconds=5)},
        audit=AuditEntry("key.update", "key", key_id(tokens["expired"])),
    )
    return Proxy(kg, up, tokens, slow)


Headers = Callable[[dict[str, str]], "CIMultiDict[str]"]


def bearer(name: str) -> Headers:
    return lambda t: CIMultiDict({"Authorization": f"Bearer {t[name]}"})


def x_api_key(*names: str) -> Headers:
    return lambda t: CIMultiDict([("X-API-Key", t[n]) for n in names])


def both(bearer_name: str, header_name: str) -> Headers:
    return lambda t: CIMultiDict(
        [("Authorization", f"Bearer {t[bearer_name]}"), ("X-API-Key", t[header_name])]
    )


def raw(**headers: str) -> Headers:
    return lambda t: CIMultiDict(headers)


def no_key() -> Headers:
    return lambda t: CIMultiDict()


CASES: list[tuple[str, str, str, Headers, int, str | None]] = [
    ("no-route", "GET", "/nowhere", bearer("all"), 404, "no_route"),
    ("no-route-root", "GET", "/", no_key(), 404, "no_route"),
    ("no-route-prefix-lookalike", "GET", "/apix", bearer("all"), 404, "no_route"),
    ("bad-path-encoded-slash", "GET", "/api/a%2Fb", bearer("all"), 400, "bad_path"),
    ("bad-path-encoded-backslash", "GET", "/api/a%5Cb", bearer("all"), 400, "bad_path"),
    ("bad-path-encoded-nul", "GET", "/api/a%00b", bearer("all"), 400, "bad_path"),
    ("missing", "GET", "/api/x", no_key(), 401, "missing_api_key"),
    ("missing-empty-bearer", "GET", "/api/x", raw(Authorization="Bearer "), 401, "missing_api_key"),
    ("missing-empty-header", "GET", "/api/x", raw(**{"X-API-Key": ""}), 401, "missing_api_key"),
    ("missing-basic-for-upstream", "GET", "/api/x", raw(Authorization="Basic dTpw"), 401,
     "missing_api_key"),
    ("ambiguous-bearer-vs-header", "GET", "/api/x", both("all", "other"), 400, "ambiguous_api_key"),
    ("ambiguous-two-headers", "GET", "/api/x", x_api_key("all", "other"), 400,
     "ambiguous_api_key"),
    ("ambiguous-invalid-second", "GET", "/api/x", x_api_key("all", "unknown"), 400,
     "ambiguous_api_key"),
    ("same-key-twice-is-one", "GET", "/api/x", both("all", "all"), 200, None),
    ("same-header-twice-is-one", "GET", "/api/x", x_api_key("all", "all"), 200, None),
    ("invalid-garbage", "GET", "/api/x", raw(**{"X-API-Key": "not-a-key"}), 401,
     "invalid_api_key"),
    ("invalid-other-scheme-word", "GET", "/api/x", raw(Authorization="Bearer kg_x_y"), 401,
     "invalid_api_key"),
    ("invalid-unknown", "GET", "/api/x", bearer("unknown"), 401, "invalid_api_key"),
    ("disabled", "GET", "/api/x", bearer("disabled"), 401, "key_disabled"),
    ("expired", "GET", "/api/x", x_api_key("expired"), 401, "key_expired"),
    ("allowed", "GET", "/api/allowed/x", bearer("reader"), 200, None),
    ("allowed-root-of-glob", "GET", "/api/allowed", bearer("reader"), 200, None),
    ("forbidden-method", "POST", "/api/allowed/x", bearer("reader"), 403, "forbidden"),
    ("forbidden-path", "GET", "/api/other", bearer("reader"), 403, "forbidden"),
    ("forbidden-sibling-prefix", "GET", "/api/allowedx", bearer("reader"), 403, "forbidden"),
    ("forbidden-head-not-implied", "HEAD", "/api/allowed/x", bearer("reader"), 403, "forbidden"),
    ("forbidden-other-route", "GET", "/down/allowed/x", bearer("reader"), 403, "forbidden"),
    ("upstream-unavailable", "GET", "/down/x", bearer("all"), 502, "upstream_unavailable"),
    ("upstream-timeout", "GET", "/slow/x", bearer("all"), 504, "upstream_timeout"),
    ("public-no-key", "GET", "/pub/x", no_key(), 200, None),
    ("public-bad-key-not-checked", "GET", "/pub/x", raw(**{"X-API-Key": "nope"}), 200, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_proxy_each_spec_case_gets_its_status(
    proxy: Proxy, method: str, path: str, headers: Headers, status: int, code: str | None
) -> None:
    resp = await proxy.kg.client.request(method, path, headers=headers(proxy.tokens))
    assert resp.status == status
    assert resp.headers["X-Request-Id"]
    if code is None:
        assert resp.headers["X-Upstream"] == "a"
        return
    assert resp.content_type == "application/json"
    if method != "HEAD":
        body = await resp.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == code
        message = body["error"]["message"]
        assert isinstance(message, str)
        assert message
        assert all(token not in message for token in proxy.tokens.values())
    if code == "missing_api_key":
        assert resp.headers["WWW-Authenticate"] == REALM
    # Nothing keygate refused reached the upstream.
    assert proxy.up.seen == []


async def test_proxy_slow_upstream_leaves_other_routes_responsive(proxy: Proxy) -> None:
    headers = {"X-API-Key": proxy.tokens["all"]}
    slow = asyncio.create_task(proxy.kg.client.get("/slow/x", headers=headers))
    await wait_for(lambda: proxy.slow.holding == 1, within=2, what="the slow upstream")
    started = time.monotonic()
    resp = await proxy.kg.client.get("/api/x", headers=headers)
    assert resp.status == 200
    assert time.monotonic() - started < 0.4
    assert not slow.done()
    assert (await slow).status == 504


# --- request ids ------------------------------------------------------------------
async def test_proxy_client_request_id_is_propagated(proxy: Proxy) -> None:
    headers = {"X-API-Key": proxy.tokens["all"], "X-Request-Id": "req-42.abc"}
    resp = await proxy.kg.client.get("/api/x", headers=headers)
    assert resp.headers["X-Request-Id"] == "req-42.abc"
    assert header_values(await resp.json(), "X-Request-Id") == ["req-42.abc"]


async def test_proxy_client_request_id_is_returned_on_errors(proxy: Proxy) -> None:
    resp = await proxy.kg.client.get("/api/x", headers={"X-Request-Id": "req-43"})
    assert resp.status == 401
    assert resp.headers["X-Request-Id"] == "req-43"


async def test_proxy_request_id_created_when_absent(proxy: Proxy) -> None:
    resp = await proxy.kg.client.get("/api/x", headers={"X-API-Key": proxy.tokens["all"]})
    created = resp.headers["X-Request-Id"]
    assert created
    assert header_values(await resp.json(), "X-Request-Id") == [created]


# --- what the upstream received ---------------------------------------------------------
async def echoed(resp: ClientResponse) -> dict[str, Any]:
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_proxy_bearer_credential_is_removed(proxy: Proxy) -> None:
    resp = await proxy.kg.client.get("/api/x", headers=bearer("all")(proxy.tokens))
    seen = await echoed(resp)
    assert header_values(seen, "Authorization") == []
    assert proxy.tokens["all"] not in str(seen["headers"])


async def test_proxy_x_api_key_credential_is_removed(proxy: Proxy) -> None:
    resp = await proxy.kg.client.get("/api/x", headers=x_api_key("all", "all")(proxy.tokens))
    seen = await echoed(resp)
    assert header_values(seen, "X-API-Key") == []
    assert proxy.tokens["all"] not in str(seen["headers"])


async def test_proxy_upstream_basic_authorization_passes_untouched(proxy: Proxy) -> None:
    basic = "Basic " + base64.b64encode(b"svc:upstream-pass").decode()
    headers = {"X-API-Key": proxy.tokens["all"], "Authorization": basic}
    seen = await echoed(await proxy.kg.client.get("/api/x", headers=headers))
    assert header_values(seen, "Authorization") == [basic]
    assert header_values(seen, "X-API-Key") == []


async def test_proxy_keygate_identity_replaces_client_copies(proxy: Proxy) -> None:
    headers = CIMultiDict(
        [
            ("X-API-Key", proxy.tokens["all"]),
            ("X-Keygate-User", "root"),
            ("X-Keygate-Groups", "admin"),
            ("x-keygate-key-id", "forged"),
            ("X-Keygate-Anything", "forged"),
            ("X_Keygate_User", "root"),
        ]
    )
    seen = await echoed(await proxy.kg.client.get("/api/x", headers=headers))
    assert header_values(seen, "X-Keygate-User") == ["admin"]
    assert header_values(seen, "X-Keygate-Groups") == ["default"]
    assert header_values(seen, "X-Keygate-Key-Id") == [key_id(proxy.tokens["all"])]
    assert header_values(seen, "X-Keygate-Anything") == []
    assert header_values(seen, "X_Keygate_User") == []
    assert "forged" not in str(seen["headers"])


async def test_proxy_public_route_sends_no_identity(proxy: Proxy) -> None:
    seen = await echoed(await proxy.kg.client.get("/pub/x", headers={"X-Keygate-User": "root"}))
    assert [k for k, _ in seen["headers"] if k.lower().startswith("x-keygate-")] == []


async def test_proxy_forwarded_headers_are_appended_and_set(proxy: Proxy) -> None:
    headers = {
        "X-API-Key": proxy.tokens["all"],
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "gopher",
        "X-Forwarded-Host": "evil.example",
    }
    seen = await echoed(await proxy.kg.client.get("/api/x", headers=headers))
    assert header_values(seen, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert header_values(seen, "X-Forwarded-Proto") == ["http"]
    host = f"{proxy.kg.client.host}:{proxy.kg.client.port}"
    assert header_values(seen, "X-Forwarded-Host") == [host]


async def test_proxy_forwarded_for_is_created_when_absent(proxy: Proxy) -> None:
    seen = await echoed(await proxy.kg.client.get("/pub/x"))
    assert header_values(seen, "X-Forwarded-For") == ["127.0.0.1"]


async def test_proxy_method_query_and_body_are_forwarded(proxy: Proxy) -> None:
    resp = await proxy.kg.client.put(
        "/api/x?b=2&a=1", headers={"X-API-Key": proxy.tokens["all"]}, data=b"x" * 1000
    )
    seen = await echoed(resp)
    assert (seen["method"], seen["path"], seen["query"], seen["body_len"]) == (
        "PUT",
        "/api/x",
        "b=2&a=1",
        1000,
    )


# --- other credential sources -------------------------------------------------------------
async def sources_gateway(keygate_factory: GatewayFactory, up: Recorder, *sources: str) -> Keygate:
    return await keygate_factory(default_route(up.url), sources=sources)


def basic_for(token: str) -> str:
    parsed = keyformat.parse(token, "kg")
    userpass = f"{parsed.key_id}:{parsed.secret}{parsed.checksum}"
    return "Basic " + base64.b64encode(userpass.encode()).decode()


async def test_proxy_basic_source_authenticates_and_is_removed(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory
) -> None:
    up = await recorder_factory("a")
    kg = await sources_gateway(keygate_factory, up, "basic")
    token = await kg.make_key(["default"], name="basic-user")
    seen = await echoed(await kg.client.get("/x", headers={"Authorization": basic_for(token)}))
    assert header_values(seen, "Authorization") == []
    assert header_values(seen, "X-Keygate-Key-Name") == ["basic-user"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode(b"0123456789ab:wrong").decode(),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic !!!not-base64!!!",
    ],
)
async def test_proxy_basic_source_bad_credentials_are_401_invalid(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory, authorization: str
) -> None:
    up = await recorder_factory("a")
    kg = await sources_gateway(keygate_factory, up, "basic")
    resp = await kg.client.get("/x", headers={"Authorization": authorization})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert up.seen == []


async def test_proxy_bearer_not_a_source_is_missing(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory
) -> None:
    up = await recorder_factory("a")
    kg = await sources_gateway(keygate_factory, up, "x-api-key")
    token = await kg.make_key(["default"])
    resp = await kg.client.get("/x", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize(
    ("query", "forwarded"),
    [
        ("api_key={t}", ""),
        ("a=1&api_key={t}&b=%2f+%7E&c", "a=1&b=%2f+%7E&c"),
        ("api_key={t}&z=%C3%A9&a=1&a=2", "z=%C3%A9&a=1&a=2"),
        ("x=%20&y=&api_key={t}", "x=%20&y="),
        ("api_keyx=1&api_key={t}", "api_keyx=1"),
    ],
)
async def test_proxy_query_source_param_is_removed_rest_byte_identical(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory, query: str, forwarded: str
) -> None:
    up = await recorder_factory("a")
    kg = await sources_gateway(keygate_factory, up, "query:api_key")
    token = await kg.make_key(["default"])
    request = http("GET", "/x?" + query.format(t=token), [("Connection", "close")])
    resp = await fetch(kg.port, request)
    assert resp.status == 200, resp.body
    (seen,) = up.seen
    assert seen.path == "/x"
    assert seen.query == forwarded
    assert token not in seen.target


async def test_proxy_query_source_two_different_keys_is_ambiguous(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory
) -> None:
    up = await recorder_factory("a")
    kg = await sources_gateway(keygate_factory, up, "query:api_key", "x-api-key")
    one, two = await kg.make_key(["default"]), await kg.make_key(["default"])
    resp = await kg.client.get(f"/x?api_key={one}", headers={"X-API-Key": two})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "ambiguous_api_key"


# --- routing -------------------------------------------------------------------------------
async def test_proxy_strip_prefix_removes_route_prefix(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory
) -> None:
    up = await recorder_factory("a")
    kg = await keygate_factory((Route(name="svc", prefix="/svc", upstream=up.url,
                                      strip_prefix=True),))  # fmt: skip
    headers = {"X-API-Key": await kg.make_key(["default"])}
    for path, expected in [("/svc/a/b?q=1", "/a/b"), ("/svc", "/"), ("/svc/", "/")]:
        seen = await echoed(await kg.client.get(path, headers=headers))
        assert seen["path"] == expected, path
    assert up.seen[0].query == "q=1"


async def test_proxy_upstream_base_path_is_kept(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory
) -> None:
    up = await recorder_factory("a")
    kg = await keygate_factory(
        (Route(name="svc", prefix="/svc", upstream=up.url + "/base", strip_prefix=True),)
    )
    headers = {"X-API-Key": await kg.make_key(["default"])}
    seen = await echoed(await kg.client.get("/svc/a", headers=headers))
    assert seen["path"] == "/base/a"


async def test_proxy_longest_prefix_wins(
    keygate_factory: GatewayFactory, recorder_factory: RecorderFactory
) -> None:
    short, long = await recorder_factory("short"), await recorder_factory("long")
    kg = await keygate_factory(
        (
            Route(name="api", prefix="/api", upstream=short.url),
            Route(name="v2", prefix="/api/v2", upstream=long.url),
        )
    )
    headers = {"X-API-Key": await kg.make_key(["default"])}
    for path, upstream in [
        ("/api/v2/x", "long"),
        ("/api/v2", "long"),
        ("/api/v2x", "short"),
        ("/api/v1/x", "short"),
        ("/api", "short"),
    ]:
        resp = await kg.client.get(path, headers=headers)
        assert resp.headers["X-Upstream"] == upstream, path
        assert (await echoed(resp))["path"] == path
