"""Framing and smuggling (OWASP API8), byte for byte on raw sockets.

Every request here carries a valid key, so a request the gateway wrongly
accepted would reach the recording upstream; a refused one must be a 400 with
nothing upstream, and the connection must end (nothing after it is parsed).
"""

from __future__ import annotations

import pytest

from tests.support.gateway import Rig
from tests.support.raw import bearer, http, read_reply

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: k\r\n\r\n"


def _req(token: str, head: str, body: bytes = b"") -> bytes:
    """``POST /f`` with the key, then ``head`` lines (CRLF-joined) and ``body`` as given."""
    return (
        f"POST /f HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {token}\r\n{head}\r\n\r\n"
    ).encode("latin-1") + body


BAD_FRAMING = {
    "cl_and_te": ("Content-Length: 5\r\nTransfer-Encoding: chunked", b"0\r\n\r\n" + SMUGGLED),
    "te_and_cl": ("Transfer-Encoding: chunked\r\nContent-Length: 40", b"0\r\n\r\n" + SMUGGLED),
    "duplicate_cl_same": ("Content-Length: 5\r\nContent-Length: 5", b"hello"),
    "duplicate_cl_differ": ("Content-Length: 5\r\nContent-Length: 6", b"hello!"),
    "cl_list": ("Content-Length: 5, 5", b"hello"),
    "cl_negative": ("Content-Length: -1", b""),
    "cl_plus": ("Content-Length: +5", b"hello"),
    "cl_hex": ("Content-Length: 0x5", b"hello"),
    "cl_float": ("Content-Length: 5.0", b"hello"),
    "cl_huge": ("Content-Length: 99999999999999999999999", b""),
    "te_chunked_twice_one_header": ("Transfer-Encoding: chunked, chunked", b"0\r\n\r\n"),
    "te_chunked_twice_two_headers": (
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"0\r\n\r\n",
    ),
    "te_chunked_not_last": ("Transfer-Encoding: chunked, gzip", b"0\r\n\r\n"),
    "te_unknown": ("Transfer-Encoding: xchunked", b"0\r\n\r\n"),
    "te_identity": ("Transfer-Encoding: identity", b"hello"),
    "te_gzip_chunked": ("Transfer-Encoding: gzip, chunked", b"0\r\n\r\n"),
    "te_vertical_tab": ("Transfer-Encoding: \x0bchunked", b"0\r\n\r\n"),
    "chunk_size_not_hex": ("Transfer-Encoding: chunked", b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_negative": ("Transfer-Encoding: chunked", b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_0x": ("Transfer-Encoding: chunked", b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_overflow": (
        "Transfer-Encoding: chunked",
        b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ),
    "chunk_size_leading_space": ("Transfer-Encoding: chunked", b" 5\r\nhello\r\n0\r\n\r\n"),
    "chunk_data_too_long": ("Transfer-Encoding: chunked", b"5\r\nhelloEXTRA\r\n0\r\n\r\n"),
    "chunk_bare_lf": ("Transfer-Encoding: chunked", b"5\nhello\n0\n\n"),
    "obs_fold": ("X-Folded: a\r\n b", b""),
    "obs_fold_tab": ("X-Folded: a\r\n\tb", b""),
    "obs_fold_te": ("Transfer-Encoding: identity\r\n chunked", b"0\r\n\r\n"),
    "space_before_colon": ("Content-Length : 5", b"hello"),
    "space_in_name": ("X Bad: 1", b""),
    "nul_in_value": ("X-A: a\x00b", b""),
    "nul_in_name": ("X-\x00A: b", b""),
    "ctl_in_value": ("X-A: a\x01b", b""),
    "del_in_value": ("X-A: a\x7fb", b""),
    "bare_cr_in_value": ("X-A: a\rb", b""),
    "empty_name": (": value", b""),
    "leading_space_line": (" X-A: 1", b""),
}


@pytest.mark.parametrize(("head", "body"), BAD_FRAMING.values(), ids=BAD_FRAMING.keys())
async def test_framing_hostile_request_is_400_nothing_upstream(
    rig: Rig, token: str, head: str, body: bytes
) -> None:
    conn = await rig.raw()
    try:
        await conn.send(_req(token, head, body))
        reply = await conn.reply()
        assert reply.status == 400, (reply.status, reply.body[:200])
        assert reply.code == "bad_request"
        assert await conn.closed_within(2.0)
    finally:
        await conn.close()
    assert rig.up.seen == []


RAW_BAD = {
    "bare_lf_head": b"GET /f HTTP/1.1\nHost: k\nAuthorization: Bearer {t}\n\n",
    "bare_lf_one_line": b"GET /f HTTP/1.1\r\nHost: k\nAuthorization: Bearer {t}\r\n\r\n",
    "nul_in_target": b"GET /f\x00x HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "ctl_in_target": b"GET /f\x01 HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "space_in_target": b"GET /f x HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "tab_in_target": b"GET /f\tx HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "bad_version": b"GET /f HTTP/1.x\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "lower_version": b"GET /f http/1.1\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "no_version": b"GET /f\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "method_with_slash": b"G/ET /f HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {t}\r\n\r\n",
    "te_in_http10": (
        b"POST /f HTTP/1.0\r\nHost: k\r\nAuthorization: Bearer {t}\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "header_no_colon": b"GET /f HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {t}\r\nX-A\r\n\r\n",
}


@pytest.mark.parametrize("raw", RAW_BAD.values(), ids=RAW_BAD.keys())
async def test_framing_malformed_head_is_400_nothing_upstream(
    rig: Rig, token: str, raw: bytes
) -> None:
    reply = await rig.exchange(raw.replace(b"{t}", token.encode()))
    assert reply.status == 400, (reply.status, reply.body[:200])
    assert rig.up.seen == []


async def test_framing_pipelined_requests_are_each_authenticated(rig: Rig, token: str) -> None:
    conn = await rig.raw()
    try:
        await conn.send(
            http("GET", "/one", [bearer(token)])
            + http("GET", "/two", [bearer(token[:-1] + "x")])
            + http("GET", "/three", [])
            + http("GET", "/four", [bearer(token)], host="k")
        )
        statuses = [(await conn.reply()).status for _ in range(4)]
    finally:
        await conn.close()
    assert statuses == [200, 401, 401, 200]
    assert rig.up.paths() == ["/one", "/four"]


async def test_framing_pipelined_after_refusal_bodies_are_not_requests(
    rig: Rig, token: str
) -> None:
    # A refused request's declared body holds what looks like a request: it is body.
    hidden = http("GET", "/hidden", [bearer(token)])
    first = http("POST", "/refused", [("Content-Length", str(len(hidden)))], hidden)
    conn = await rig.raw()
    try:
        await conn.send(first + http("GET", "/after", [bearer(token)]))
        assert (await conn.reply()).status == 401
        assert (await conn.reply()).status == 200
    finally:
        await conn.close()
    assert rig.up.paths() == ["/after"]


@pytest.mark.brisk
async def test_framing_refusal_with_body_still_coming_closes(rig: Rig, token: str) -> None:
    # Half the declared body: keygate refuses and closes rather than wait for the
    # rest and guess where the next request starts.
    conn = await rig.raw()
    try:
        await conn.send(http("POST", "/r", [("Content-Length", "100")], b"x" * 50))
        reply = await conn.reply()
        assert reply.status == 401
        assert reply.header("Connection") == "close"
        # After at most the lingering time (body_idle_timeout, 0.2 s here).
        assert await conn.closed_within(3.0)
    finally:
        await conn.close()
    assert rig.up.seen == []


async def test_framing_extra_spaces_in_request_line_parse_consistently(
    rig: Rig, token: str
) -> None:
    # RFC 9112 §3 lets a server split on whitespace: the path checked is the one sent.
    reply = await rig.exchange(b"GET  /f  HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer "
                               + token.encode() + b"\r\n\r\n")
    assert reply.status == 200
    assert rig.up.paths() == ["/f"]


async def test_framing_body_that_looks_like_a_request_stays_body(rig: Rig, token: str) -> None:
    conn = await rig.raw()
    try:
        await conn.send(
            http("POST", "/b", [bearer(token), ("Content-Length", str(len(SMUGGLED)))], SMUGGLED)
        )
        reply = await conn.reply()
    finally:
        await conn.close()
    assert reply.status == 200
    assert rig.up.paths() == ["/b"]
    assert rig.up.last().body_len == len(SMUGGLED)


@pytest.mark.parametrize(
    ("headers", "body", "framing"),
    [
        ([("Content-Length", "5")], b"hello", "length"),
        ([("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n0\r\n\r\n", "chunked"),
        ([("Transfer-Encoding", "Chunked")], b"5\r\nhello\r\n0\r\n\r\n", "chunked"),
        ([("Content-Length", "0")], b"", "length"),
        ([], b"", "none"),
    ],
    ids=["length", "chunked", "chunked_case", "empty", "no_body"],
)
async def test_framing_outbound_never_carries_both_length_and_chunked(
    rig: Rig, token: str, headers: list[tuple[str, str]], body: bytes, framing: str
) -> None:
    reply = await rig.exchange(http("POST", "/out", [bearer(token), *headers], body))
    assert reply.status == 200
    seen = rig.up.last()
    cl, te = seen.values("Content-Length"), seen.values("Transfer-Encoding")
    assert not (cl and te)
    assert len(cl) <= 1 and len(te) <= 1
    if framing == "chunked":
        assert te == ["chunked"]
    elif framing == "length":
        assert cl == [str(len(body))]
    assert seen.body_len == (5 if body else 0)


async def test_framing_chunked_trailers_never_become_headers(rig: Rig, token: str) -> None:
    body = b"5\r\nhello\r\n0\r\nX-Keygate-User: root\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    reply = await rig.exchange(
        http("POST", "/t", [bearer(token), ("Transfer-Encoding", "chunked")], body)
    )
    assert reply.status == 200
    seen = rig.up.last()
    assert seen.values("X-Keygate-User") == ["admin"]
    assert "6.6.6.6" not in repr(seen.headers)


async def test_framing_response_to_bad_request_ends_connection(rig: Rig, token: str) -> None:
    conn = await rig.raw()
    try:
        await conn.send(_req(token, "Content-Length: 1\r\nContent-Length: 2", b"ab") + SMUGGLED)
        first = await read_reply(conn.reader)
        assert first.status == 400
        assert await conn.closed_within(2.0)
    finally:
        await conn.close()
    assert rig.up.seen == []
