"""Request smuggling: what reaches the upstream is framed by keygate, never by the client.

The review that found ``Connection: Content-Length`` smuggling a second,
unchecked request through the edge (docs/security.md, "The framing
invariant"): a client may not nominate framing fields, Host or keygate's own
fields as hop-by-hop, on either front end. The recorder upstream parses what
it receives: a smuggled request would show up as a second request it saw.
"""

from __future__ import annotations

import gzip
import hashlib

import pytest

from keygate.config.settings import Route
from tests.support.gateway import RigFactory
from tests.support.raw import bearer, http
from tests.support.upstreams import Recorder

FRONT_ENDS = pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
SMUGGLED = b"GET /admin/x HTTP/1.1\r\nHost: a\r\n\r\n"
UNFINISHED = b"POST /admin/x HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\nvictim="


def _routes(recorder: Recorder) -> tuple[Route, ...]:
    return (
        Route(name="open", prefix="/open", upstream=recorder.url, public=True),
        Route(name="keyed", prefix="/", upstream=recorder.url),
    )


@FRONT_ENDS
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize(
    "nominated",
    [
        "Content-Length",
        "content-length",
        "CONTENT-LENGTH , close",
        "keep-alive, Content-Length",
        "Transfer-Encoding",
        "te, transfer-encoding",
    ],
)
@pytest.mark.parametrize("payload", [SMUGGLED, UNFINISHED], ids=["whole", "unfinished"])
async def test_connection_naming_framing_is_refused_and_closes(
    rig_factory: RigFactory,
    recorder: Recorder,
    fast_path: bool,
    method: str,
    nominated: str,
    payload: bytes,
) -> None:
    rig = await rig_factory(routes=_routes(recorder), server={"fast_path": fast_path})
    conn = await rig.raw()
    try:
        headers = [("Connection", nominated), ("Content-Length", str(len(payload)))]
        await conn.send(http(method, "/open/x", headers, payload))
        reply = await conn.reply()
        assert (reply.status, reply.code) == (400, "bad_request")
        assert reply.header("Connection") == "close"
        assert await conn.closed_within(2.0)
    finally:
        await conn.close()
    assert recorder.seen == []  # nothing at all reached the upstream


@FRONT_ENDS
async def test_connection_naming_framing_in_a_second_header_line_is_refused(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await rig_factory(routes=_routes(recorder), server={"fast_path": fast_path})
    headers = [
        ("Connection", "keep-alive"),
        ("Connection", "Content-Length"),
        ("Content-Length", str(len(SMUGGLED))),
    ]
    reply = await rig.exchange(http("POST", "/open/x", headers, SMUGGLED))
    assert reply.status == 400
    assert recorder.seen == []


@FRONT_ENDS
async def test_a_body_is_forwarded_with_keygate_framing(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    # A body that looks like a request is just a body: one request upstream,
    # declaring exactly its length.
    rig = await rig_factory(routes=_routes(recorder), server={"fast_path": fast_path})
    for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS"):
        headers = [("Content-Length", str(len(SMUGGLED)))]
        reply = await rig.exchange(http(method, "/open/x", headers, SMUGGLED))
        assert reply.status == 200, reply
        seen = recorder.last()
        assert seen.method == method
        assert seen.values("Content-Length") == [str(len(SMUGGLED))]
        assert seen.values("Transfer-Encoding") == []
        assert seen.body_len == len(SMUGGLED)
    assert [s.path for s in recorder.seen] == ["/open/x"] * 5


@FRONT_ENDS
@pytest.mark.parametrize(
    "nominated",
    [
        "Host",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Request-Id",
        "X-Keygate-User",
        "X-Keygate-Key-Id",
        "X-Keygate-Groups",
        "X-Keygate-Key-Name",
        "host, x-forwarded-for, x-request-id, x-keygate-user",
    ],
)
async def test_connection_cannot_remove_what_keygate_sets(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, nominated: str
) -> None:
    rig = await rig_factory(routes=_routes(recorder), server={"fast_path": fast_path})
    token = await rig.key()
    headers = [bearer(token), ("Connection", nominated), ("X-Request-Id", "rid-1")]
    reply = await rig.exchange(http("GET", "/x", headers))
    assert reply.status == 200
    seen = recorder.last()
    assert seen.values("Host") == [recorder.url.removeprefix("http://")]
    assert seen.values("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.values("X-Forwarded-Proto") == ["http"]
    assert seen.values("X-Forwarded-Host") == ["keygate.test"]
    assert seen.values("X-Request-Id") == ["rid-1"]
    assert seen.values("X-Keygate-User") == ["admin"]
    assert seen.values("X-Keygate-Groups") == ["default"]
    assert len(seen.values("X-Keygate-Key-Id")) == 1
    assert len(seen.values("X-Keygate-Key-Name")) == 1


@FRONT_ENDS
@pytest.mark.parametrize("name", ["Transfer_Encoding", "Content_Length", "TRANSFER_ENCODING"])
async def test_underscore_spellings_of_framing_never_reach_the_upstream(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, name: str
) -> None:
    rig = await rig_factory(routes=_routes(recorder), server={"fast_path": fast_path})
    headers = [(name, "chunked" if "ncod" in name.lower() else "3"), ("Content-Length", "5")]
    reply = await rig.exchange(http("POST", "/open/x", headers, b"hello"))
    assert reply.status == 200
    seen = recorder.last()
    assert [k for k, _ in seen.headers if "_" in k] == []
    assert seen.body_len == 5


@FRONT_ENDS
@pytest.mark.parametrize("coding", ["identity, chunked", "gzip, chunked", "chunked, chunked"])
async def test_every_framing_refusal_closes_the_connection(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, coding: str
) -> None:
    rig = await rig_factory(routes=_routes(recorder), server={"fast_path": fast_path})
    conn = await rig.raw()
    try:
        # A valid request is pipelined behind: it must never be read.
        await conn.send(
            http("POST", "/open/x", [("Transfer-Encoding", coding)], b"0\r\n\r\n")
            + http("GET", "/open/after")
        )
        reply = await conn.reply()
        assert reply.status == 400
        assert await conn.closed_within(2.0)
    finally:
        await conn.close()
    assert recorder.seen == []


@FRONT_ENDS
@pytest.mark.parametrize("size", [100, 200_000], ids=["small", "large"])
async def test_a_compressed_body_is_relayed_as_it_came(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, size: int
) -> None:
    # aiohttp's server once decoded gzip uploads and the decoded bytes went
    # upstream under the compressed length: the rest was a second request.
    rig = await rig_factory(routes=_routes(recorder), server={"fast_path": fast_path})
    payload = b"x" * size + SMUGGLED
    body = gzip.compress(payload, mtime=0)
    headers = [("Content-Encoding", "gzip"), ("Content-Length", str(len(body)))]
    reply = await rig.exchange(http("POST", "/open/x", headers, body))
    assert reply.status == 200
    assert [s.path for s in recorder.seen] == ["/open/x"]
    seen = recorder.last()
    assert seen.values("Content-Encoding") == ["gzip"]
    assert seen.values("Content-Length") == [str(len(body))]
    assert (seen.body_len, seen.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
