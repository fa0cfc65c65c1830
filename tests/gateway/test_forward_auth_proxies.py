"""docs/forward-auth.md's nginx and Caddy recipes, run as written with real nginx
(Debian nginx-light) and real Caddy in front of keygate and a recording upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from keygate.config.settings import Route
from keygate.gateway.request.pathnorm import normalise_path
from tests.support.frontproxies import CADDY, NGINX, run_caddy, run_nginx
from tests.support.gateway import GatewayFactory, Keygate, key_id
from tests.support.raw import Raw, Reply, exchange, http
from tests.support.upstreams import Recorder, Seen

PROXIES = {"nginx": (NGINX, run_nginx), "caddy": (CADDY, run_caddy)}


@dataclass
class Front:
    name: str
    port: int
    kg: Keygate
    upstream: Recorder
    tokens: dict[str, str]

    async def get(self, target: str, token: str | None = None, **headers: str) -> Reply:
        pairs = list(headers.items())
        if token is not None:
            pairs.append(("Authorization", f"Bearer {token}"))
        return await exchange(self.port, http("GET", target, pairs, host="app.test"))

    def seen_since(self, count: int) -> list[Seen]:
        return self.upstream.seen[count:]


@pytest.fixture(params=sorted(PROXIES))
async def front(
    request: pytest.FixtureRequest,
    keygate_factory: GatewayFactory,
    upstream: Recorder,
    tmp_path: Path,
) -> AsyncIterator[Front]:
    name = request.param
    binary, run = PROXIES[name]
    if binary is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it with apt-get)")
    kg = await keygate_factory(
        (
            Route(name="default", prefix="/", upstream=upstream.url),
            Route(name="pub", prefix="/pub", upstream=upstream.url, public=True),
        ),
        server={"trusted_proxies": ("127.0.0.1/32",)},
        forward_auth={"enabled": True, "nginx_compat": name == "nginx"},
    )
    actor = await kg.admin_actor()
    rule = {"route": "default", "methods": ["GET"], "paths": ["/orders/**"]}
    await kg.services.groups.create(actor, {"name": "reader", "rules": [rule]})
    disabled = await kg.make_key(["default"])
    await kg.services.keys.update(actor, key_id(disabled), {"status": "disabled"})
    tokens = {
        "valid": await kg.make_key(["default"], name="sync"),
        "reader": await kg.make_key(["reader"]),
        "disabled": disabled,
        "limited": await kg.make_key(
            ["default"], rate_limits=[{"name": "hourly", "limit": 1, "window": 3600}]
        ),
    }
    app_port = urlsplit(upstream.url).port
    assert app_port is not None
    async with run(tmp_path / name, keygate=kg.port, app=app_port) as port:
        yield Front(name, port, kg, upstream, tokens)


def header(seen: Seen, name: str) -> list[str]:
    return [v for k, v in seen.headers if k.lower() == name.lower()]


async def test_recipe_forwards_a_valid_key_with_the_identity(front: Front) -> None:
    token = front.tokens["valid"]
    reply = await front.get("/orders/1?page=2", token, **{"X-Keygate-User": "root"})
    assert reply.status == 200, reply.body
    [seen] = front.upstream.seen
    assert seen.target == "/orders/1?page=2"
    assert header(seen, "X-Keygate-User") == ["admin"]
    assert header(seen, "X-Keygate-Key-Id") == [key_id(token)]
    assert header(seen, "X-Keygate-Key-Name") == ["sync"]
    assert header(seen, "X-Keygate-Groups") == ["default"]
    assert header(seen, "Authorization") == []  # the credential stays at the proxy


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        (None, "/orders/1", 401),
        ("garbage", "/orders/1", 401),
        ("disabled", "/orders/1", 401),
        ("reader", "/secret", 403),
    ],
)
async def test_recipe_refuses_with_the_right_status(
    front: Front, who: str | None, path: str, status: int
) -> None:
    token = "kg_notakey_at_all" if who == "garbage" else front.tokens.get(who or "")
    reply = await front.get(path, token)
    assert reply.status == status, reply.body
    if status == 401:
        assert reply.header("WWW-Authenticate") == 'Bearer realm="keygate"'
    assert front.upstream.seen == []


async def test_recipe_never_lets_a_forged_identity_through(front: Front) -> None:
    forged = {
        "X-Keygate-User": "root",
        "X-Keygate-Groups": "admin",
        "X-Keygate-Key-Id": "zzzzzzzzzzzz",
        "X-Keygate-Key-Name": "forged",
    }
    public = await front.get("/pub/page", None, **forged)
    assert public.status == 200, public.body
    keyed = await front.get("/orders/2", front.tokens["reader"], **forged)
    assert keyed.status == 200, keyed.body
    first, second = front.upstream.seen
    for name in forged:
        assert header(first, name) in ([], [""]), name
    assert header(second, "X-Keygate-User") == ["admin"]
    assert header(second, "X-Keygate-Groups") == ["reader"]


async def test_recipe_client_cannot_rename_the_request(front: Front) -> None:
    """A client's X-Original-URI or X-Forwarded-Uri never decides the path."""
    reader = front.tokens["reader"]
    reply = await front.get(
        "/secret", reader, **{"X-Original-URI": "/orders/1", "X-Forwarded-Uri": "/orders/1"}
    )
    assert reply.status in (400, 403), reply.body
    assert front.upstream.seen == []


async def test_keygate_refuses_an_untrusted_peer_naming_a_request(front: Front) -> None:
    """Straight to keygate from 127.0.0.2, not a trusted proxy: 403 untrusted_proxy."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", front.kg.port, local_addr=("127.0.0.2", 0)
    )
    conn = Raw(reader, writer)
    try:
        await conn.send(
            http(
                "GET",
                "/_keygate/auth",
                [
                    ("X-Forwarded-Uri", "/orders/1"),
                    ("X-Forwarded-Method", "GET"),
                    ("Authorization", f"Bearer {front.tokens['valid']}"),
                ],
            )
        )
        reply = await conn.reply()
    finally:
        await conn.close()
    assert (reply.status, reply.code) == (403, "untrusted_proxy")


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("/orders/%2e%2e/secret", False),
        ("/orders/%2E%2E/%2e%2e/secret", False),
        ("/orders//1", True),
        ("/orders/./1", True),
        ("/orders/a%2Fb", False),
    ],
)
async def test_recipe_judges_the_path_the_proxy_forwards(
    front: Front, target: str, allowed: bool
) -> None:
    reply = await front.get(target, front.tokens["reader"])
    if not allowed:
        assert reply.status in (400, 403), (reply.status, reply.body)
        assert front.upstream.seen == []
        return
    assert reply.status == 200, reply.body
    [seen] = front.upstream.seen
    # What reached the application normalises to a path the key may use.
    assert normalise_path(seen.target.partition("?")[0]).startswith("/orders/")


async def test_recipe_relays_a_rate_limit_refusal(front: Front) -> None:
    """nginx (nginx_compat): 403 with X-Keygate-Error and Retry-After; Caddy: the 429."""
    token = front.tokens["limited"]
    assert (await front.get("/orders/1", token)).status == 200
    refused = await front.get("/orders/1", token)
    retry = int(refused.header("Retry-After") or 0)
    assert 3590 <= retry <= 3600, refused.headers
    if front.name == "nginx":
        assert refused.status == 403
        assert refused.header("X-Keygate-Error") == "rate_limited"
    else:
        assert (refused.status, refused.code) == (429, "rate_limited")
    assert len(front.upstream.seen) == 1


async def test_recipe_relays_headers_too_large_as_a_refusal(front: Front) -> None:
    """A client whose headers keygate's parser refuses: nginx (nginx_compat) gets a
    403 it can relay instead of turning a 431 into its own 500; Caddy the 431."""
    pairs = [("Authorization", f"Bearer {front.tokens['valid']}")]
    pairs += [(f"X-H{i}", "v") for i in range(120)]
    reply = await exchange(front.port, http("GET", "/orders/1", pairs, host="app.test"))
    if front.name == "nginx":
        assert reply.status == 403, reply.body
        assert reply.header("X-Keygate-Error") == "headers_too_large"
    else:
        assert (reply.status, reply.code) == (431, "headers_too_large")
    assert front.upstream.seen == []


async def test_recipe_never_forwards_a_method_proxy_mode_refuses(front: Front) -> None:
    """A lower-case method (Caddy passes it on; nginx refuses it itself) is refused
    as keygate's proxy mode refuses it, never judged as its upper-case twin."""
    token = front.tokens["valid"]
    pairs = [("Authorization", f"Bearer {token}")]
    reply = await exchange(front.port, http("get", "/orders/1", pairs, host="app.test"))
    if front.name == "caddy":  # keygate's refusal, not the application's parser's
        assert (reply.status, reply.code) == (400, "bad_request"), reply.body
    else:
        assert reply.status == 400, reply.body  # nginx's own
    assert front.upstream.seen == []
