"""Differential test: the edge protocol answers exactly as aiohttp's server does.

Two real keygates share one SQLite store (as ``server.workers`` processes do)
and front the same two upstreams: one with ``server.fast_path`` on (plain
proxied requests served by :mod:`gateway.edge`), one with it off (aiohttp
serves everything). Each case sends identical raw bytes to both over raw
sockets and asserts that

- the answers are identical: status line, every header (name, value) pair in
  order — only ``Date`` and a generated ``X-Request-Id`` may differ in value —
  the body byte for byte, its framing, and whether the connection stays open
  (a probe request follows every answer that leaves it open);
- each upstream received identical requests (method, target, header pairs in
  order, body; only a generated ``X-Request-Id`` may differ).

The upstreams: the recorder's canned aiohttp answers (``/up`` route, prefix
stripped, onto its ``/_up/`` levers) and a strict raw server answering canned
bytes (``/raw`` route) where the exact response framing matters (no
Content-Type, hop-by-hop names in Connection, EOF-delimited bodies, odd reason
phrases, 103 Early Hints, HTTP/1.0 answers).

This module is the gate for raising the aiohttp pin: the edge copies aiohttp's
parser tables and ``_prepare_headers`` framing and recognises its errors by
message text (README, next to the test command).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from keygate.config.settings import Route
from keygate.gateway.auth.keyformat import make_token
from tests.support.gateway import Keygate, make_settings, start_keygate, started_client
from tests.support.raw import CUT, Reply, bearer, connect, http, read_final
from tests.support.raw_upstreams import Exchange, StrictUpstream
from tests.support.upstreams import Recorder, Seen

pytestmark = pytest.mark.asyncio(loop_scope="module")

IO_TIMEOUT = 5.0
EOF_WAIT = 1.5  # a body delimited by the end of the connection must end this soon
_DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")


# --- the raw upstream's canned answers ----------------------------------------------------
def _canned(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


_EOF_BODY = b"until-eof;" * 2000
RAW_ANSWERS: dict[str, tuple[bytes, bool]] = {
    # path: (the whole answer, close after it)
    "/raw/notype": (_canned("HTTP/1.1 200 OK\nContent-Length: 5\n", b"hello"), False),
    "/raw/zero": (_canned("HTTP/1.1 200 OK\nContent-Length: 0\n"), False),
    "/raw/hop": (
        _canned(
            "HTTP/1.1 200 OK\nConnection: keep-alive, X-Hop\nX-Hop: drop-me\n"
            "Keep-Alive: timeout=5\nX-Keep: yes\nContent-Type: text/plain\nContent-Length: 3\n",
            b"hop",
        ),
        False,
    ),
    "/raw/eof": (_canned("HTTP/1.1 200 OK\nContent-Type: text/plain\n", _EOF_BODY), True),
    "/raw/reason": (_canned("HTTP/1.1 200 Everything Fine\nContent-Length: 2\n", b"ok"), False),
    "/raw/reason404": (
        _canned(
            "HTTP/1.1 404 Gone Fishing\nContent-Type: text/plain\nContent-Length: 4\n", b"gone"
        ),
        False,
    ),
    "/raw/early": (
        _canned("HTTP/1.1 103 Early Hints\nLink: </s.css>; rel=preload\n")
        + _canned("HTTP/1.1 200 OK\nLink: </s.css>; rel=preload\nContent-Length: 5\n", b"early"),
        False,
    ),
    "/raw/chunked": (
        _canned(
            "HTTP/1.1 200 OK\nContent-Type: text/plain\nTransfer-Encoding: chunked\n",
            b"2\r\nab\r\n3;ext=1\r\ncde\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
        False,
    ),
    "/raw/204cl": (_canned("HTTP/1.1 204 No Content\nContent-Length: 0\nX-Why: none\n"), False),
    "/raw/304cl": (_canned('HTTP/1.1 304 Not Modified\nETag: "x"\nContent-Length: 1234\n'), False),
    "/raw/lower": (
        _canned(
            "HTTP/1.1 200 OK\ncontent-type: text/plain\ncontent-length: 5\nx-lower: 1\n", b"lower"
        ),
        False,
    ),
    "/raw/server": (
        _canned(
            "HTTP/1.1 200 OK\nServer: upstream/1.0\nDate: Mon, 01 Jan 2024 00:00:00 GMT\n"
            "Content-Length: 2\n",
            b"sv",
        ),
        False,
    ),
    "/raw/close": (
        _canned("HTTP/1.1 200 OK\nConnection: close\nContent-Length: 5\n", b"close"),
        True,
    ),
    "/raw/http10": (_canned("HTTP/1.0 200 OK\nContent-Length: 4\n", b"v1.0"), True),
    "/raw/type-empty-chunked": (
        _canned("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"0\r\n\r\n"),
        False,
    ),
    "/raw/te-and-cl": (
        _canned(
            "HTTP/1.1 200 OK\nContent-Length: 100\nTransfer-Encoding: chunked\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
        False,
    ),
    "/raw/garbage": (b"this is not http\r\n\r\n", True),
    "/raw/ratelimit": (
        _canned(
            'HTTP/1.1 200 OK\nRateLimit: "up";r=1;t=2\nX-RateLimit-Remaining: 7\n'
            "X-Request-Id: upstream-id\nContent-Length: 2\n",
            b"rl",
        ),
        False,
    ),
}


def raw_answer(seen: Seen) -> tuple[bytes, bool]:
    path = seen.target.partition("?")[0]
    if path == "/raw/head":
        head = _canned('HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 10\nETag: "r"\n')
        return (head if seen.method == "HEAD" else head + b"0123456789"), False
    if path in RAW_ANSWERS:
        return RAW_ANSWERS[path]
    text = f"{seen.method} {seen.target}".encode("latin-1")
    return _canned(f"HTTP/1.1 200 OK\nContent-Length: {len(text)}\n", text), False


def _raw_answer(seen: Seen, exchange: Exchange) -> tuple[bytes, bool]:
    return raw_answer(seen)


# --- the client side: raw answers, several on one connection --------------------------------
CLOSED = "closed"
# Not routed (no route at "/"): every gateway answers 404 no_route and closes.
PROBE = b"GET /probe HTTP/1.1\r\nHost: keygate.test\r\nConnection: close\r\n\r\n"


async def converse(port: int, request: bytes, *methods: str) -> list[Reply | str]:
    """The answers to ``request`` (one per method: a pipeline when several), all
    written at once; then, if the connection is still open, the answer to a probe.
    A connection that ends before an answer is whole is ``CLOSED``."""
    out: list[Reply | str] = []

    async def answer(method: str) -> Reply | None:
        try:
            reply = await read_final(conn.reader, method=method, eof_wait=EOF_WAIT)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if reply.error == CUT:
            return None
        assert reply.error is None, reply.error  # broken chunked framing
        return reply

    async with connect(port) as conn, asyncio.timeout(IO_TIMEOUT):
        await conn.send(request)
        for method in methods:
            reply = await answer(method)
            out.append(CLOSED if reply is None else reply)
            if reply is None or reply.framing.startswith("eof"):
                return out
        try:
            await conn.send(PROBE)
        except ConnectionError:
            out.append(CLOSED)
        else:
            probe = await answer("GET")
            out.append(CLOSED if probe is None else probe)
    return out


# --- the two gateways ------------------------------------------------------------------------
@dataclass
class Pair:
    edge: Keygate  # fast_path on
    plain: Keygate  # fast_path off: aiohttp serves every request
    received: list[Seen]  # what both upstreams received, in order
    tokens: dict[str, str]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    tmp: Path = tmp_path_factory.mktemp("parity")
    received: list[Seen] = []
    up = await Recorder("aiohttp", seen=received).start()
    raw = await StrictUpstream(_raw_answer, name="raw", seen=received).start()
    routes = (
        Route(name="up", prefix="/up", upstream=up.at("/_up"), strip_prefix=True),
        Route(name="raw", prefix="/raw", upstream=raw.url),
        Route(name="pub", prefix="/pub", upstream=up.at("/_up"), public=True),
        Route(name="lim", prefix="/lim", upstream=raw.url, max_body_bytes=4),
    )
    # No flush while the module runs: each gateway's quota counts stay its own
    # (flushed, they would add up in the shared store).
    settings = make_settings(
        tmp, routes, max_keys_per_user=50, last_used_flush_interval=3600.0
    )
    gateways: list[Keygate] = []
    try:
        edge = await start_keygate(settings, started_client)
        gateways.append(edge)
        actor = await edge.admin_actor()
        rule = {"route": "up", "methods": ["GET", "HEAD"], "paths": ["/up/small", "/up/head"]}
        await edge.services.groups.create(actor, {"name": "limited", "rules": [rule]})
        rule = {"route": "raw", "methods": ["GET", "POST"], "paths": ["/raw/**"]}
        await edge.services.groups.create(actor, {"name": "poster", "rules": [rule]})
        tokens = {
            "valid": await edge.make_key(["default"], name="parity"),
            "other": await edge.make_key(["default"], name="other"),
            "limited": await edge.make_key(["limited"], name="limited"),
            "poster": await edge.make_key(["poster"], name="poster"),
            "disabled": await edge.make_key(["default"], name="disabled"),
        }
        # Limits (docs/reference.md#rate-limits-quotas-and-ip-allowlists): one hourly
        # request, then 429s; a quota of one; a roomy limit; addresses elsewhere and here.
        tokens["hourly"] = await edge.make_key(
            ["default"], name="hourly", rate_limits=[{"name": "h", "limit": 1, "window": 3600}]
        )
        tokens["quota"] = await edge.make_key(
            ["default"], name="quota", quota={"limit": 1, "period": "day"}
        )
        tokens["roomy"] = await edge.make_key(
            ["default"],
            name="roomy",
            rate_limits=[{"name": "roomy", "limit": 100000, "window": 100000}],
            quota={"limit": 1000000, "period": "month"},
        )
        tokens["elsewhere"] = await edge.make_key(
            ["default"], name="elsewhere", allowed_ips=["192.0.2.0/24"], rate_limits=[]
        )
        tokens["here"] = await edge.make_key(
            ["limited"], name="here", allowed_ips=["127.0.0.1", "::1"]
        )
        disabled_id = tokens["disabled"].split("_")[1]
        await edge.services.keys.set_status(actor, disabled_id, "disabled")
        valid = tokens["valid"]
        tokens["badsum"] = valid[:-1] + ("A" if valid[-1] != "A" else "B")
        tokens["unknown"] = make_token("kg", "zzzzzzzzzzzz", "a" * 32)
        # Started after the keys exist: its key-id snapshot and policy hold them.
        plain_settings = replace(settings, server=replace(settings.server, fast_path=False))
        plain = await start_keygate(plain_settings, started_client, admin_token=edge.admin_token)
        gateways.append(plain)
        assert edge.client.server.runner.server.edge is not None
        assert plain.client.server.runner.server.edge is None
        for kg in gateways:  # one frozen clock: the same counts give the same fields
            limiter = kg.gw.limiter
            limiter.clock = lambda: 1_800_000_000.25
            limiter.origin = 1_800_000_000.25
        yield Pair(edge, plain, received, tokens)
    finally:
        for kg in reversed(gateways):
            await kg.client.close()
        await raw.close()
        await up.close()


# --- the cases -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    method: str
    target: str
    key: str | None = "valid"  # a name in Pair.tokens, "ambiguous", or None
    headers: tuple[tuple[str, str], ...] = ()
    host: str | None = "keygate.test"
    body: bytes = b""
    versions: tuple[str, ...] = ()  # the modes that apply; empty: all of them

    def request(self, mode: str, tokens: dict[str, str]) -> bytes:
        version = "HTTP/1.0" if mode.startswith("10") else "HTTP/1.1"
        headers: list[tuple[str, str]] = []
        if self.key == "ambiguous":
            headers += [bearer(tokens["valid"]), ("X-API-Key", tokens["other"])]
        elif self.key is not None:
            headers.append(bearer(tokens[self.key]))
        headers += self.headers
        if mode == "11close":
            headers.append(("Connection", "close"))
        elif mode == "10ka":
            headers.append(("Connection", "keep-alive"))
        return http(self.method, self.target, headers, self.body, host=self.host, version=version)

    @property
    def client_request_id(self) -> bool:
        """Whether the client sent a valid X-Request-Id (then it is kept, not generated)."""
        return any(
            k.lower() == "x-request-id" and _REQUEST_ID.fullmatch(v) for k, v in self.headers
        )


MODES = ("11ka", "11close", "10", "10ka")

_GET_TARGETS = (
    "/up/small",
    "/up/json?x=1&y=%20z&x=2",
    "/up/empty",
    "/up/204",
    "/up/304",
    "/up/cookies",
    "/up/reqid",
    "/up/chunked",
    "/up/big",
    # A small body of known length still arriving after its head: streamed, its
    # Content-Length kept, on both (Answer.whole).
    "/up/drip?wait=0.05",
    "/up/drip?first=0&wait=0.05",
    "/up/500",
    "/up/head",
    "/up/a/./b//c/%7Euser",
    "/raw/notype",
    "/raw/zero",
    "/raw/hop",
    "/raw/eof",
    "/raw/reason",
    "/raw/reason404",
    "/raw/early",
    "/raw/chunked",
    "/raw/204cl",
    "/raw/304cl",
    "/raw/lower",
    "/raw/server",
    "/raw/close",
    "/raw/http10",
    "/raw/type-empty-chunked",
    "/raw/te-and-cl",
    "/raw/garbage",
    "/raw/head",
    "/pub/small",
)
CASES: list[Case] = [Case(f"GET {t}", "GET", t) for t in _GET_TARGETS]
CASES += [
    Case("HEAD /up/head", "HEAD", "/up/head"),
    Case("HEAD /up/small", "HEAD", "/up/small"),
    Case("HEAD /up/chunked", "HEAD", "/up/chunked"),
    Case("HEAD /up/big", "HEAD", "/up/big"),
    Case("HEAD /up/204", "HEAD", "/up/204"),
    Case("HEAD /raw/head", "HEAD", "/raw/head"),
    Case("HEAD /raw/notype", "HEAD", "/raw/notype"),
    Case("DELETE /up/small", "DELETE", "/up/small"),
    Case("DELETE /raw/zero", "DELETE", "/raw/zero"),
    Case("OPTIONS /up/small", "OPTIONS", "/up/small"),
    Case("OPTIONS /raw/x", "OPTIONS", "/raw/x"),
    Case("POST /up/small no body", "POST", "/up/small"),
    Case("POST /raw/x no body", "POST", "/raw/x"),
    Case("POST /up/small CL0", "POST", "/up/small", headers=(("Content-Length", "0"),)),
    Case("PUT /raw/x CL0", "PUT", "/raw/x", headers=(("Content-Length", "0"),)),
    Case("PATCH /up/chunked", "PATCH", "/up/chunked"),
    # X-Request-Id: a valid one is kept both ways, an invalid one replaced.
    Case("rid valid", "GET", "/up/small", headers=(("X-Request-Id", "client-id.42"),)),
    Case("rid invalid", "GET", "/up/small", headers=(("X-Request-Id", "not valid!"),)),
    Case("rid valid raw", "GET", "/raw/hop", headers=(("X-Request-Id", "r=1/2:3@x"),)),
    Case("rid valid upstream id", "GET", "/up/reqid", headers=(("X-Request-Id", "mine"),)),
    Case("rid valid refused", "GET", "/up/small", key=None, headers=(("X-Request-Id", "abc"),)),
    Case("rid invalid refused", "GET", "/up/small", key=None, headers=(("X-Request-Id", "a b"),)),
    # Request headers: the same hygiene on both front ends.
    Case(
        "spoofed identity",
        "GET",
        "/raw/x",
        headers=(
            ("X-Keygate-User", "root"),
            ("X_Keygate_Groups", "admin"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Host", "evil.test"),
            ("Forwarded", "for=1.2.3.4"),
        ),
    ),
    Case(
        "connection names",
        "GET",
        "/raw/x",
        headers=(("Connection", "X-Drop-Me"), ("X-Drop-Me", "1"), ("X-Keep", "2")),
    ),
    Case(
        "hop-by-hop request",
        "GET",
        "/raw/x",
        headers=(("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Proxy-Authorization", "x")),
    ),
    Case(
        "repeated and odd headers",
        "GET",
        "/raw/x?q=1",
        headers=(("Accept", "a/b"), ("Accept", "c/d"), ("X-Empty", ""), ("X-Tab", "a\tb")),
    ),
    Case("host with port", "GET", "/raw/x", host="keygate.test:8443"),
    Case("x-api-key", "GET", "/raw/x", key=None, headers=(("X-API-Key", "{valid}"),)),
    Case("same key twice", "GET", "/raw/x", headers=(("X-API-Key", "{valid}"),)),
    Case("public with stray key", "GET", "/pub/small"),
    Case("public without key", "GET", "/pub/small", key=None),
    Case("utf8 header", "GET", "/raw/x", headers=(("X-Name", "caf\xe9"),)),
    Case(
        "lower-case names",
        "GET",
        "/raw/x",
        headers=(("accept", "x/y"), ("user-agent", "ua"), ("x-custom", "z")),
    ),
    # Refusals.
    Case("no key", "GET", "/up/small", key=None),
    Case("no key raw", "GET", "/raw/x", key=None),
    Case("bad checksum", "GET", "/up/small", key="badsum"),
    Case("unknown key id", "GET", "/up/small", key="unknown"),
    Case("not a token", "GET", "/up/small", key=None, headers=(("X-API-Key", "nope"),)),
    Case("disabled key", "GET", "/up/small", key="disabled"),
    Case("ambiguous keys", "GET", "/up/small", key="ambiguous"),
    Case("forbidden path", "GET", "/up/json", key="limited"),
    Case("forbidden method", "DELETE", "/up/small", key="limited"),
    Case("allowed limited", "GET", "/up/small", key="limited"),
    Case(
        "forbidden override",
        "GET",
        "/up/small",
        key="limited",
        headers=(("X-HTTP-Method-Override", "DELETE"),),
    ),
    Case("no route", "GET", "/nowhere"),
    Case("no route root", "GET", "/", key=None),
    Case("bad path", "GET", "/a/../../x"),
    Case("bad path under route", "GET", "/up/../../x"),
    Case("encoded slash", "GET", "/up/a%2Fb"),
    Case("HEAD refused", "HEAD", "/up/small", key=None),
    Case("HEAD forbidden", "HEAD", "/up/json", key="limited"),
    Case("HEAD no route", "HEAD", "/nowhere"),
    Case("OPTIONS refused", "OPTIONS", "/up/small", key="badsum"),
    Case("POST refused", "POST", "/up/small", key=None),
    Case("no host 1.x", "GET", "/raw/x", host=None),
    # Handed to aiohttp by the edge (the bytes replayed): answered the same all the same.
    Case("POST body", "POST", "/raw/x", headers=(("Content-Length", "5"),), body=b"hello"),
    Case(
        "POST chunked body",
        "POST",
        "/up/small",
        headers=(("Transfer-Encoding", "chunked"),),
        body=b"3\r\nabc\r\n0\r\n\r\n",
        versions=("11ka", "11close"),
    ),
    Case(
        "expect 100-continue",
        "PUT",
        "/raw/x",
        headers=(("Expect", "100-continue"), ("Content-Length", "2")),
        body=b"ok",
    ),
    Case(
        "body refused", "POST", "/raw/x", key=None, headers=(("Content-Length", "3"),), body=b"abc"
    ),
    Case("absolute-form target", "GET", "http://keygate.test/raw/x?a=1"),
    Case("asterisk target", "OPTIONS", "*"),
    Case("admin health", "GET", "/_keygate/health", key=None),
    Case("admin unknown", "GET", "/_keygate/nope", key=None),
    Case("admin encoded", "GET", "/%5Fkeygate/health", key=None),
    Case("upgrade not websocket", "GET", "/raw/x", headers=(("Upgrade", "h2c"),)),
    Case("two content-lengths", "GET", "/raw/x", headers=(("Content-Length", "0"),) * 2),
    Case("non-ascii target", "GET", "/raw/caf\xe9"),
    Case("fragment", "GET", "/raw/x#frag"),
    Case("unknown method", "BREW", "/raw/x"),
    Case("TRACE", "TRACE", "/raw/x"),
    Case("obs-fold", "GET", "/raw/x", headers=(("X-Fold", "a\r\n b"),)),
    Case("trailing space", "GET", "/raw/x", headers=(("X-Space", "v \t"),)),
    Case("many headers", "GET", "/raw/x", headers=tuple((f"X-H{i}", "v") for i in range(101))),
    Case("long target", "GET", "/raw/" + "a" * 8100),
    Case("long header", "GET", "/raw/x", headers=(("X-Long", "v" * 9000),)),
    # Bodies: small whole ones, at and past 64 KiB, and over the route's limit.
    Case("DELETE body", "DELETE", "/raw/x", headers=(("Content-Length", "3"),), body=b"abc"),
    Case(
        "POST 64 KiB",
        "POST",
        "/raw/x",
        headers=(("Content-Length", str(64 * 1024)),),
        body=b"b" * (64 * 1024),
    ),
    Case(
        "POST 64 KiB + 1",
        "POST",
        "/raw/x",
        headers=(("Content-Length", str(64 * 1024 + 1)),),
        body=b"c" * (64 * 1024 + 1),
    ),
    Case("POST within limit", "POST", "/lim/x", headers=(("Content-Length", "4"),), body=b"four"),
    Case("POST over limit", "POST", "/lim/x", headers=(("Content-Length", "5"),), body=b"five!"),
    # The key is judged before the body's size: a refused key learns nothing of the limit.
    Case(
        "POST over limit, bad key",
        "POST",
        "/lim/x",
        key="badsum",
        headers=(("Content-Length", "5"),),
        body=b"five!",
    ),
    Case(
        "POST over limit, unknown key",
        "POST",
        "/lim/x",
        key="unknown",
        headers=(("Content-Length", "5"),),
        body=b"five!",
    ),
    Case(
        "POST body forbidden",
        "POST",
        "/up/small",
        key="limited",
        headers=(("Content-Length", "2"),),
        body=b"no",
    ),
    Case(
        "POST lower-case length",
        "POST",
        "/raw/x",
        headers=(("content-length", "2"), ("content-type", "text/plain")),
        body=b"lc",
    ),
    Case("length with plus", "POST", "/raw/x", headers=(("Content-Length", "+2"),), body=b"ab"),
    Case("two content-types", "GET", "/raw/x", headers=(("Content-Type", "a/b"),) * 2),
    # The security review's findings (docs/security.md): the same answer on both.
    Case(
        "connection names content-length",
        "POST",
        "/raw/x",
        headers=(("Connection", "Content-Length"), ("Content-Length", "33")),
        body=b"GET /raw/smuggled HTTP/1.1\r\n\r\n\r\n",
    ),
    Case(
        "connection names transfer-encoding",
        "GET",
        "/raw/x",
        headers=(("Connection", "keep-alive, transfer-encoding"),),
    ),
    Case(
        "connection names keygate's fields",
        "GET",
        "/raw/x",
        headers=(("Connection", "Host, X-Forwarded-For, X-Request-Id, X-Keygate-User"),),
    ),
    Case("encoded line feed", "GET", "/raw/a%0Ab"),
    Case("encoded CR LF in a public path", "GET", "/pub/a%0D%0AX:%201", key=None),
    Case("encoded DEL", "GET", "/raw/a%7F"),
    Case(
        "re-routing headers",
        "GET",
        "/raw/x",
        headers=(
            ("X-Original-URL", "/admin"),
            ("X-Original-URI", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("X-Forwarded-Uri", "/admin"),
            ("X_Forwarded_Path", "/admin"),
            ("X-Envoy-Original-Path", "/admin"),
            ("X-HTTP-Path-Override", "/admin"),
        ),
    ),
    Case(
        "override header underscores",
        "GET",
        "/up/small",
        key="limited",
        headers=(("X_HTTP_Method_Override", "DELETE"),),
    ),
    Case("override query encoded", "GET", "/up/small?%5Fmethod=DELETE", key="limited"),
    Case("override query dot", "GET", "/raw/x?.method=DELETE", key="poster"),
    Case("override allowed", "POST", "/raw/x?_method=get", key="poster"),
    Case(
        "override form field",
        "POST",
        "/raw/x",
        key="poster",
        headers=(("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "16")),
        body=b"a=1&_method=PUT&",
    ),
    Case(
        "form without override",
        "POST",
        "/raw/x",
        key="poster",
        headers=(("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "14")),
        body=b"a=1&method=PUT",
    ),
    Case(
        "override multipart field",
        "POST",
        "/raw/x",
        key="poster",
        headers=(("Content-Type", "multipart/form-data; boundary=zz"), ("Content-Length", "70")),
        body=b'--zz\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--zz--',
    ),
    Case(
        "override in a body without a type",
        "POST",
        "/raw/x",
        key="poster",
        headers=(("Content-Length", "14"),),
        body=b"_method=DELETE",
    ),
    Case(
        "form in an unknown coding",
        "POST",
        "/raw/x",
        key="poster",
        headers=(("Content-Encoding", "br"), ("Content-Length", "3")),
        body=b"abc",
    ),
    Case("destination", "GET", "/raw/x", headers=(("Destination", "/raw/a/../b"),)),
    Case(
        "destination absolute",
        "GET",
        "/raw/x",
        headers=(("Destination", "http://keygate.test/raw/c"),),
    ),
    Case("destination elsewhere", "GET", "/raw/x", headers=(("Destination", "http://evil/x"),)),
    Case("destination other route", "GET", "/raw/x", headers=(("Destination", "/up/x"),)),
    Case(
        "destination forbidden",
        "GET",
        "/up/small",
        key="limited",
        headers=(("Destination", "/up/json"),),
    ),
    Case("destination move", "MOVE", "/raw/x", headers=(("Destination", "/raw/y"),)),
    # Limits: the same fields, 429s and 403s on both (each counts for itself).
    Case("rate limited", "GET", "/up/small", key="hourly"),
    Case("rate limited raw", "GET", "/raw/x", key="hourly"),
    Case("rate limited HEAD", "HEAD", "/up/head", key="hourly"),
    Case("quota exceeded", "GET", "/raw/x", key="quota"),
    Case("roomy limits", "GET", "/up/small", key="roomy"),
    Case("roomy limits, upstream's own fields", "GET", "/raw/ratelimit", key="roomy"),
    Case("roomy limits, streamed", "GET", "/up/chunked", key="roomy"),
    Case("roomy limits, 204", "GET", "/up/204", key="roomy"),
    Case("roomy limits, upstream 500", "GET", "/up/500", key="roomy"),
    Case("roomy limits, forbidden", "GET", "/nowhere", key="roomy"),
    Case(
        "roomy limits, body",
        "POST",
        "/raw/x",
        key="roomy",
        headers=(("Content-Length", "5"),),
        body=b"hello",
    ),
    Case("ip not allowed", "GET", "/up/small", key="elsewhere"),
    Case(
        "ip not allowed, spoofed forwarded-for",
        "GET",
        "/up/small",
        key="elsewhere",
        headers=(("X-Forwarded-For", "192.0.2.1"),),
    ),
    Case("ip allowed", "GET", "/up/small", key="here"),
    Case("ip allowed, forbidden path", "GET", "/up/json", key="here"),
    Case(
        "identity, chunked",
        "POST",
        "/raw/x",
        headers=(("Transfer-Encoding", "identity, chunked"),),
        body=b"0\r\n\r\n",
        versions=("11ka", "11close"),
    ),
]


def _expand(case: Case, tokens: dict[str, str]) -> Case:
    headers = tuple((k, v.format(**tokens)) for k, v in case.headers)
    return replace(case, headers=headers)


def _norm_headers(
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...], keep_request_id: bool
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in headers:
        low = name.lower()
        if low == "date":
            assert _DATE.fullmatch(value), f"not an HTTP date: {value!r}"
            value = "<date>"
        elif low == "x-request-id" and not keep_request_id:
            value = "<generated>"
        out.append((name, value))
    return out


def _comparable(answers: list[Reply | str], keep_request_id: bool) -> list[Any]:
    """Answers with Date and generated X-Request-Id values blanked (the probe's is generated)."""
    out: list[Any] = []
    for i, answer in enumerate(answers):
        if isinstance(answer, str):
            out.append(answer)
            continue
        out.append(
            {
                "interim": answer.interim,
                "status_line": answer.status_line,
                "headers": _norm_headers(answer.headers, keep_request_id and i == 0),
                "framing": answer.framing,
                "body": answer.body,
                "trailers": answer.trailers,
            }
        )
    return out


def _seen_comparable(seen: list[Seen], keep_request_id: bool) -> list[Any]:
    return [
        (
            s.upstream,
            s.method,
            s.target,
            _norm_headers(s.headers, keep_request_id),
            s.body_len,
            s.body_sha256,
        )
        for s in seen
    ]


async def _run(
    pair: Pair, kg: Keygate, request: bytes, *methods: str
) -> tuple[list[Any], list[Seen]]:
    start = len(pair.received)
    answers = await converse(kg.port, request, *methods)
    # Every upstream request was complete before its answer: nothing more can come.
    return answers, pair.received[start:]


# What aiohttp's parser refuses before any handler runs (KeygateRequestHandler.handle_error).
_PARSER_REFUSALS = frozenset({400, 413, 414, 431})


def _check_request_ids(case: Case, answers: list[Any], seen: list[Seen]) -> None:
    """A generated X-Request-Id is the one the upstream saw; every answer has exactly one."""
    first = answers[0]
    if isinstance(first, str):
        return
    ids = first.values("X-Request-Id")
    if not ids and first.status in _PARSER_REFUSALS and first.status_line.startswith("HTTP/1.0 "):
        return  # refused by aiohttp's parser itself (handle_error): no request id is made
    assert len(ids) == 1, first.headers
    if case.client_request_id:
        assert ids == [v for k, v in case.headers if k.lower() == "x-request-id"]
    for s in seen:
        assert s.header("X-Request-Id") == ids[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_edge_parity(pair: Pair, case: Case, mode: str) -> None:
    if case.versions and mode not in case.versions:
        pytest.skip("not a request this HTTP version can make")
    case = _expand(case, pair.tokens)
    request = case.request(mode, pair.tokens)
    edge_answers, edge_seen = await _run(pair, pair.edge, request, case.method)
    plain_answers, plain_seen = await _run(pair, pair.plain, request, case.method)
    keep = case.client_request_id
    assert _comparable(edge_answers, keep) == _comparable(plain_answers, keep), request
    assert _seen_comparable(edge_seen, keep) == _seen_comparable(plain_seen, keep), request
    _check_request_ids(case, edge_answers, edge_seen)
    _check_request_ids(case, plain_answers, plain_seen)


async def test_edge_parity_serves_from_two_front_ends(pair: Pair) -> None:
    """The pair is what it claims: one gateway's connections are the edge's, the other's not."""
    for kg, has_edge in ((pair.edge, True), (pair.plain, False)):
        async with connect(kg.port) as conn:
            await conn.send(Case("x", "GET", "/up/small").request("11ka", pair.tokens))
            answer = await conn.reply(within=IO_TIMEOUT)
            assert answer.status == 200
            edge = kg.client.server.runner.server.edge
            assert (edge is not None and len(edge.connections) >= 1) is has_edge


_GET = Case("get", "GET", "/up/small")
_GET_RAW = Case("get raw", "GET", "/raw/x?n=2")
_REFUSED = Case("refused", "GET", "/up/small", key=None)
_BODY = Case("body", "POST", "/raw/b", headers=(("Content-Length", "5"),), body=b"hello")
_CHUNKED = Case(
    "chunked", "POST", "/raw/c", headers=(("Transfer-Encoding", "chunked"),), body=b"0\r\n\r\n"
)
_STREAMED = Case("streamed", "GET", "/up/chunked")
_HEAD = Case("head", "HEAD", "/up/head")
PIPELINES: dict[str, list[tuple[Case, str]]] = {
    "two gets": [(_GET, "11ka"), (_GET_RAW, "11ka")],
    "three gets": [(_GET, "11ka"), (_GET_RAW, "11ka"), (_STREAMED, "11ka")],
    "get then body": [(_GET, "11ka"), (_BODY, "11ka"), (_GET_RAW, "11ka")],
    "get then chunked": [(_GET, "11ka"), (_CHUNKED, "11ka"), (_GET, "11ka")],
    "refusal then get": [(_REFUSED, "11ka"), (_GET, "11ka"), (_REFUSED, "11ka")],
    "head then get": [(_HEAD, "11ka"), (_GET, "11ka")],
    "streamed then get": [(_STREAMED, "11ka"), (_GET, "11ka")],
    "1.0 keep-alive": [(_GET, "10ka"), (_GET_RAW, "10ka"), (_REFUSED, "10ka")],
    "1.0 streamed ends it": [(_STREAMED, "10ka"), (_GET, "10ka")],
}


# A request that ends its connection, with more bytes behind it in the same
# write: both answer it and close (RFC 9112 §9.6: the rest is never read).
CLOSING_PIPELINES: dict[str, list[tuple[Case, str]]] = {
    "close ends the pipeline": [(_GET, "11close"), (_GET_RAW, "11ka")],
    "1.0 without keep-alive": [(_GET, "10"), (_GET_RAW, "10ka")],
}


@pytest.mark.parametrize("name", list(CLOSING_PIPELINES))
async def test_a_closing_request_is_answered_and_nothing_further_read(
    pair: Pair, name: str
) -> None:
    steps = [(_expand(case, pair.tokens), mode) for case, mode in CLOSING_PIPELINES[name]]
    request = b"".join(case.request(mode, pair.tokens) for case, mode in steps)
    methods = [case.method for case, _ in steps]
    edge_answers, edge_seen = await _run(pair, pair.edge, request, *methods)
    plain_answers, plain_seen = await _run(pair, pair.plain, request, *methods)
    assert _comparable(edge_answers, False) == _comparable(plain_answers, False), request
    assert _seen_comparable(edge_seen, False) == _seen_comparable(plain_seen, False)
    first = edge_answers[0]
    assert isinstance(first, Reply) and first.status_line.endswith("200 OK"), edge_answers
    assert edge_answers[1:] == [CLOSED], edge_answers
    assert len(edge_seen) == 1, edge_seen  # the upstream saw the first request only


# A complete request and then bytes that are not HTTP, in one write: both
# answer the request, then refuse the rest with a 400 and close.
GARBAGE = {
    "not http": b"this is not http\r\n\r\n",
    "bad method": b"G@T /raw/x HTTP/1.1\r\nHost: keygate.test\r\n\r\n",
    "nul": b"\x00\x01\x02\r\n\r\n",
    "bare lf": b"GET /raw/x HTTP/1.1\nHost: keygate.test\n\n",
    "bad version": b"GET /raw/x HTTP/9.9\r\nHost: keygate.test\r\n\r\n",
}
GARBAGE_AFTER = {
    "get": _GET,
    "get raw": _GET_RAW,
    "body": _BODY,
    "refused": _REFUSED,
    "head": _HEAD,
}


@pytest.mark.parametrize("garbage", list(GARBAGE))
@pytest.mark.parametrize("first", list(GARBAGE_AFTER))
async def test_a_request_followed_by_garbage_is_answered_then_refused(
    pair: Pair, first: str, garbage: str
) -> None:
    case = _expand(GARBAGE_AFTER[first], pair.tokens)
    request = case.request("11ka", pair.tokens) + GARBAGE[garbage]
    edge_answers, edge_seen = await _run(pair, pair.edge, request, case.method, "GET")
    plain_answers, plain_seen = await _run(pair, pair.plain, request, case.method, "GET")
    assert _comparable(edge_answers, False) == _comparable(plain_answers, False), request
    assert _seen_comparable(edge_seen, False) == _seen_comparable(plain_seen, False)
    answered, refusal, *rest = edge_answers
    assert isinstance(answered, Reply) and answered.status != 400, edge_answers
    assert isinstance(refusal, Reply) and refusal.status == 400, edge_answers
    assert rest == [CLOSED]


@pytest.mark.parametrize("name", list(PIPELINES))
async def test_edge_parity_pipelined(pair: Pair, name: str) -> None:
    """Several requests in one write: the same answers, in the same order, on both."""
    steps = [(_expand(case, pair.tokens), mode) for case, mode in PIPELINES[name]]
    request = b"".join(case.request(mode, pair.tokens) for case, mode in steps)
    methods = [case.method for case, _ in steps]
    edge_answers, edge_seen = await _run(pair, pair.edge, request, *methods)
    plain_answers, plain_seen = await _run(pair, pair.plain, request, *methods)
    assert _comparable(edge_answers, False) == _comparable(plain_answers, False), request
    assert _seen_comparable(edge_seen, False) == _seen_comparable(plain_seen, False), request
