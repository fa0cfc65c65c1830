"""Method overrides through a real gateway, on both front ends (docs/security.md).

A key allowed only GET and POST sends requests that ask the upstream to run
DELETE instead: by header (any spelling), by query parameter (any encoding),
by a form field of a small or a multi-megabyte body (urlencoded, multipart,
gzip). Each is refused with 403 and the upstream never receives a whole
request; legitimate forms and uploads pass untouched.
"""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import pytest

from keygate.config.settings import Route
from tests.support.gateway import Rig, RigFactory
from tests.support.polling import wait_for
from tests.support.raw import Reply, bearer, http
from tests.support.upstreams import MIB, Recorder

FRONT_ENDS = pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
POST_ONLY = [{"route": "*", "methods": ["GET", "POST"], "paths": ["/api/**"]}]


async def _rig(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, **route: Any
) -> Rig:
    routes = (Route(name="default", prefix="/", upstream=recorder.url, **route),)
    return await rig_factory(routes=routes, server={"fast_path": fast_path})


async def _post(rig: Rig, token: str, content_type: str, body: bytes) -> Reply:
    """POST ``body`` whole (with its length) to /api/x under ``token``."""
    headers = [bearer(token), ("Content-Type", content_type), ("Content-Length", str(len(body)))]
    return await rig.exchange(http("POST", "/api/x", headers, body))


async def _post_only_key(rig: Rig) -> str:
    actor = await rig.kg.admin_actor()
    await rig.kg.services.groups.create(actor, {"name": "poster", "rules": POST_ONLY})
    return await rig.key(["poster"])


@FRONT_ENDS
@pytest.mark.parametrize(
    "header",
    [
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-http-method-override", "delete"),
        ("X_HTTP_METHOD_OVERRIDE", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X_HTTP_Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Method-Override", "POST, DELETE"),
    ],
)
async def test_override_headers_need_the_method(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, header: tuple[str, str]
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    reply = await rig.exchange(http("POST", "/api/x", [bearer(token), header]))
    assert (reply.status, reply.code) == (403, "forbidden")
    assert recorder.seen == []


@FRONT_ENDS
@pytest.mark.parametrize(
    "query",
    [
        "_method=DELETE",
        "%5Fmethod=DELETE",
        "_%6Dethod=DELETE",
        ".method=DELETE",
        "a=1;_method=delete",
    ],
)
async def test_override_query_parameters_need_the_method(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, query: str
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    reply = await rig.exchange(http("POST", f"/api/x?{query}", [bearer(token)]))
    assert reply.status == 403
    assert recorder.seen == []


URLENCODED = ("Content-Type", "application/x-www-form-urlencoded")


def _multipart(fields: list[tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, value in fields:
        out += b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (
            boundary.encode(),
            name.encode(),
            value,
        )
    return out + b"--%s--\r\n" % boundary.encode()


MULTIPART = ("Content-Type", "multipart/form-data; boundary=b0undary")


@FRONT_ENDS
@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([URLENCODED], b"name=x&_method=DELETE"),
        ([URLENCODED], b"_method=DELETE"),
        ([], b"a=1&_method=DELETE"),  # no Content-Type: Rack reads a POST as a form
        ([URLENCODED], b"a=1&%5Fmethod=delete&b=2"),
        ([MULTIPART], _multipart([("a", b"1"), ("_method", b"DELETE")])),
        ([MULTIPART], _multipart([("_method", b"DELETE")]).replace(b"\r\n", b"\n")),
        ([URLENCODED, ("Content-Encoding", "gzip")], gzip.compress(b"a=1&_method=DELETE")),
        ([("Content-Type", "application/json")], b'{"name": "x", "_method": "DELETE"}'),
    ],
    ids=[
        "form",
        "form-only",
        "no-type",
        "encoded-name",
        "multipart",
        "multipart-lf",
        "gzip",
        "json",
    ],
)
async def test_small_form_overrides_are_refused_before_anything_is_sent(
    rig_factory: RigFactory,
    recorder: Recorder,
    fast_path: bool,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    request_headers = [bearer(token), *headers, ("Content-Length", str(len(body)))]
    reply = await rig.exchange(http("POST", "/api/x", request_headers, body))
    assert (reply.status, reply.code) == (403, "forbidden")
    assert recorder.seen == []


@FRONT_ENDS
async def test_small_forms_without_a_forbidden_override_pass_untouched(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    for headers, body in (
        ([URLENCODED], b"name=x&method=DELETE&x_method=PUT"),
        ([URLENCODED], b"_method=POST&a=1"),
        ([MULTIPART], _multipart([("a", b"_method=DELETE"), ("_method", b"GET")])),
        ([("Content-Type", "application/json")], b'{"a": {"_method": "DELETE"}}'),
        ([("Content-Type", "text/plain")], b"payment_method=card&method=PUT"),
    ):
        request_headers = [bearer(token), *headers, ("Content-Length", str(len(body)))]
        reply = await rig.exchange(http("POST", "/api/x", request_headers, body))
        assert reply.status == 200, (body, reply)
        assert recorder.last().body_len == len(body)


def _big_multipart(tail: list[tuple[str, bytes]]) -> bytes:
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
    head += b"Content-Type: application/octet-stream\r\n\r\n"
    return head + bytes(range(256)) * (3 * MIB // 256) + b"\r\n" + _multipart(tail)


@FRONT_ENDS
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_a_large_upload_with_a_forbidden_override_is_cut_before_it_completes(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, chunked: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    body = _big_multipart([("_method", b"DELETE")])
    if chunked:
        framing = ("Transfer-Encoding", "chunked")
        wire = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part)
            for part in (body[i : i + 65536] for i in range(0, len(body), 65536))
        ) + b"0\r\n\r\n"
    else:
        framing, wire = ("Content-Length", str(len(body))), body
    headers = [bearer(token), MULTIPART, framing]
    reply = await rig.exchange(http("POST", "/api/upload", headers, wire))
    assert (reply.status, reply.code) == (403, "forbidden")
    # The upstream started receiving (the body streams) but never a whole request.
    await wait_for(lambda: recorder.broken_bodies == 1, what="the upstream saw a broken body")
    assert [s.body_len for s in recorder.seen] == [None]


@FRONT_ENDS
async def test_a_large_upload_without_an_override_streams_whole(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    body = _big_multipart([("_method", b"POST"), ("note", b"DELETE me")])
    headers = [bearer(token), MULTIPART, ("Content-Length", str(len(body)))]
    reply = await rig.exchange(http("POST", "/api/upload", headers, body), within=20)
    assert reply.status == 200
    seen = recorder.last()
    assert seen.body_len == len(body)
    assert seen.body_sha256 == hashlib.sha256(body).hexdigest()


@FRONT_ENDS
async def test_a_large_urlencoded_override_at_the_very_end_is_cut(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    # The value ends with the body: the last byte is held back until the end
    # is known and checked, so the upstream never sees it.
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    body = b"data=" + b"x" * (MIB) + b"&_method=DELETE"
    headers = [bearer(token), URLENCODED, ("Content-Length", str(len(body)))]
    reply = await rig.exchange(http("POST", "/api/x", headers, body))
    assert reply.status == 403
    await wait_for(lambda: recorder.broken_bodies == 1, what="the upstream saw a broken body")


@FRONT_ENDS
async def test_a_form_in_an_unknown_coding_is_refused(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    headers = [bearer(token), URLENCODED, ("Content-Encoding", "br"), ("Content-Length", "4")]
    reply = await rig.exchange(http("POST", "/api/x", headers, b"abcd"))
    assert (reply.status, reply.code) == (415, "unsupported_media_type")
    assert recorder.seen == []


@FRONT_ENDS
async def test_ignore_leaves_overrides_to_the_upstream(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path, method_override="ignore")
    token = await _post_only_key(rig)
    body = b"_method=DELETE"
    headers = [
        bearer(token),
        ("X-HTTP-Method-Override", "DELETE"),
        URLENCODED,
        ("Content-Length", str(len(body))),
    ]
    reply = await rig.exchange(http("POST", "/api/x?_method=DELETE", headers, body))
    assert reply.status == 200
    seen = recorder.last()
    assert seen.values("X-HTTP-Method-Override") == ["DELETE"]
    assert seen.body_len == len(body)


@FRONT_ENDS
async def test_a_key_allowed_every_method_is_not_held_up(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await rig.key()  # "default": every method everywhere
    body = b"_method=DELETE"
    headers = [bearer(token), ("X-HTTP-Method-Override", "DELETE"), URLENCODED]
    headers.append(("Content-Length", str(len(body))))
    reply = await rig.exchange(http("POST", "/api/x?_method=PATCH", headers, body))
    assert reply.status == 200


@FRONT_ENDS
async def test_an_allowed_override_passes(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    headers = [bearer(token), ("X-HTTP-Method-Override", "GET")]
    reply = await rig.exchange(http("POST", "/api/x?_method=post", headers))
    assert reply.status == 200


# --- the second review (real frameworks behind keygate: Express, Koa, Fastify,
# Flask and the WSGI method-override, Django, Starlette, Hono) ----------------------
B = "XyZb0und"


def _part(disposition: str, value: bytes = b"DELETE", boundary: str = B) -> bytes:
    head = f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n"
    return head.encode() + value + f"\r\n--{boundary}--\r\n".encode()


def _utf16_name() -> str:
    return "name*=utf-16le''" + "".join(f"%{c:02X}" for c in "_method".encode("utf-16-le"))


SECOND_REVIEW = [
    # JSON bodies (koa-override, fastify-method-override, Express's documented getter)
    ("json", "application/json", b'{"_method":"DELETE"}'),
    ("json vnd", "application/vnd.api+json", b'{"_method":"DELETE"}'),
    ("json escaped key", "application/json", b'{"\\u005fmethod":"DELETE"}'),
    # any body read as a form (the WSGI method-override), a type matched by prefix
    ("text/plain", "text/plain", b"_method=DELETE"),
    ("octet-stream", "application/octet-stream", b"_method=DELETE"),
    ("any type", "*/*", b"_method=DELETE"),
    ("json read as a form", "application/json", b"_method=DELETE"),
    ("type by prefix", "application/x-www-form-urlencodedx", b"_method=DELETE"),
    # qs bracket syntax (Express extended, Koa co-body)
    ("qs _method[]", "application/x-www-form-urlencoded", b"_method[]=DELETE"),
    ("qs _method[0]", "application/x-www-form-urlencoded", b"_method[0]=DELETE"),
    ("qs [_method]", "application/x-www-form-urlencoded", b"[_method]=DELETE"),
    ("qs %5B_method%5D", "application/x-www-form-urlencoded", b"%5B_method%5D=DELETE"),
    # a byte-order mark body parsers drop
    ("BOM", "application/x-www-form-urlencoded", b"\xef\xbb\xbf_method=DELETE"),
    # a charset some frameworks decode with before reading fields (Django)
    (
        "utf-16 form",
        "application/x-www-form-urlencoded; charset=utf-16-le",
        "_method=DELETE".encode("utf-16-le"),
    ),
    # RFC 2231 names and continuations (Django)
    ("name*0/name*1", f"multipart/form-data; boundary={B}", _part('name*0="_me"; name*1="thod"')),
    ("name*=utf-16le", f"multipart/form-data; boundary={B}", _part(_utf16_name())),
    ("name*=utf-7", f"multipart/form-data; boundary={B}", _part("name*=utf-7''%2BAF8-method")),
    # multipart structure Django reads
    (
        "delimiter without a line end before it",
        f"multipart/form-data; boundary={B}",
        f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx--{B}\r\n'.encode()
        + _part('name="_method"')[len(B) + 4 :],
    ),
    (
        "a part after --B--junk",
        f"multipart/form-data; boundary={B}",
        f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--{B}--junk\r\n'.encode()
        + _part('name="_method"'),
    ),
    # multer's array field
    ("multipart _method[]", f"multipart/form-data; boundary={B}", _part('name="_method[]"')),
]


@FRONT_ENDS
@pytest.mark.parametrize(
    ("content_type", "body"),
    [(t, b) for _, t, b in SECOND_REVIEW],
    ids=[name for name, _, _ in SECOND_REVIEW],
)
async def test_second_review_overrides_are_refused(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, content_type: str, body: bytes
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    reply = await _post(rig, token, content_type, body)
    assert (reply.status, reply.code) == (403, "forbidden")
    assert recorder.seen == []


@FRONT_ENDS
async def test_second_review_gzip_with_two_members_is_read_whole(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    body = gzip.compress(b"a=b") + gzip.compress(b"&_method=DELETE")
    headers = [
        bearer(token),
        URLENCODED,
        ("Content-Encoding", "gzip"),
        ("Content-Length", str(len(body))),
    ]
    reply = await rig.exchange(http("POST", "/api/x", headers, body))
    assert reply.status == 403
    assert recorder.seen == []


@FRONT_ENDS
@pytest.mark.parametrize(
    "content_type",
    [
        f'multipart/form-data; x="a;boundary=AAAA"; boundary={B}',
        'multipart/form-data; boundary="Xy\\"Z"',
        f"multipart/form-data; boundary=AAAA; boundary={B}",
        "multipart/form-data; boundary*0=XyZ; boundary*1=b0und",
        f"multipart/form-data; boundary*=utf-8''{B}",
    ],
)
async def test_an_ambiguous_multipart_boundary_is_refused(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, content_type: str
) -> None:
    # Frameworks split such a body at different boundaries: keygate cannot
    # know which fields the upstream will see.
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    body = _part('name="_method"')
    reply = await _post(rig, token, content_type, body)
    assert (reply.status, reply.code) == (400, "bad_request")
    assert recorder.seen == []


# --- the second review, round two (after the first fixes) --------------------------
def _disposition(head: bytes) -> bytes:
    return b"--" + B.encode() + b"\r\n" + head + b"\r\n\r\nDELETE\r\n--" + B.encode() + b"--\r\n"


def _cd(params: bytes, header: bytes = b"Content-Disposition: form-data;") -> bytes:
    return _disposition(header + params)


ROUND_TWO = [
    # a JSON array or other non-string value (Express takes [0], lodash lower-cases it)
    ("json array", "application/json", b'{"_method":["DELETE"]}'),
    ("json nested array", "application/json", b'{"_method":[["DELETE"]]}'),
    ("json number", "application/json", b'{"_method":1}'),
    ("json string then array", "application/json", b'{"_method":"POST","_method":["DELETE"]}'),
    # a byte-order mark before JSON (body-parser, co-body)
    ("json BOM", "application/json", b'\xef\xbb\xbf{"_method":"DELETE"}'),
    # a type Koa reads as JSON without "/json" in it
    ("csp-report", "application/csp-report", b'{"_method":"DELETE"}'),
    # a value padded past what is read (Flask's method-override strips it)
    ("padded +", "application/x-www-form-urlencoded", b"_method=" + b"+" * 64 + b"DELETE"),
    ("padded %20", "application/x-www-form-urlencoded", b"_method=" + b"%20" * 70 + b"DELETE"),
    ("padded %09", "text/plain", b"_method=" + b"%09" * 70 + b"DELETE"),
    # Content-Disposition as Python's email parser (Django) reads it
    ("\\x1f before name", MULTIPART[1], _cd(b'\x1fname="_method"')),
    ("\\x1f before value", MULTIPART[1], _cd(b' name=\x1f"_method"')),
    ("angle brackets", MULTIPART[1], _cd(b" name=<_method>")),
    ("trailing space", MULTIPART[1], _cd(b' name="_method "')),
    ("trailing tab", MULTIPART[1], _cd(b' name="_method\t"')),
    ("trailing \\x1c", MULTIPART[1], _cd(b" name=_method\x1c")),
    ("no-break space", MULTIPART[1], _cd(b'\xc2\xa0name="_method"')),
    ("\\x1f before header", MULTIPART[1], _cd(b' name="_method"', b"\x1fContent-Disposition: x;")),
]
MULTIPART_B = f"multipart/form-data; boundary={B}"
ROUND_TWO = [(n, MULTIPART_B if t == MULTIPART[1] else t, b) for n, t, b in ROUND_TWO]


@FRONT_ENDS
@pytest.mark.parametrize(
    ("content_type", "body"), [(t, b) for _, t, b in ROUND_TWO], ids=[n for n, _, _ in ROUND_TWO]
)
async def test_round_two_overrides_are_refused(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, content_type: str, body: bytes
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    reply = await _post(rig, token, content_type, body)
    assert (reply.status, reply.code) == (403, "forbidden")
    assert recorder.seen == []


@FRONT_ENDS
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        # Django unquotes <…>, keygate would split at "--<XyZb0und>"
        (f"multipart/form-data; boundary=<{B}>", _part('name="_method"')),
        # a bare blank line inside CRLF part headers: Django and python-multipart
        # read on to the CRLF one
        (
            MULTIPART_B,
            f'--{B}\r\nContent-Disposition: form-data\n\n; name="_method"\r\n\r\nDELETE\r\n'
            f"--{B}--\r\n".encode(),
        ),
        # UTF-16 and -32 without a byte-order mark: undecodable, never a 500
        ("application/json; charset=utf-16", '{"a":1}'.encode("utf-16-le")),
        ("application/x-www-form-urlencoded; charset=utf-32", "a=1".encode("utf-32-le")),
    ],
    ids=["angle-bracket boundary", "bare blank line in part head", "utf-16 no bom", "utf-32"],
)
async def test_round_two_ambiguous_or_undecodable_bodies_are_400(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, content_type: str, body: bytes
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    reply = await _post(rig, token, content_type, body)
    assert (reply.status, reply.code) == (400, "bad_request")
    assert recorder.seen == []


@FRONT_ENDS
async def test_round_two_undecodable_streamed_body_is_refused_at_once(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    # Past 64 KiB the body streams: a failure in the scan must still answer
    # at once (it once left the exchange hanging until the route timeout).
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    body = ('{"a":"' + "x" * 70_000 + '"}').encode("utf-16-le")
    headers = [
        bearer(token),
        ("Content-Type", "application/json; charset=utf-16"),
        ("Content-Length", str(len(body))),
    ]
    reply = await rig.exchange(http("POST", "/api/x", headers, body), within=5)
    assert reply.status == 400


@FRONT_ENDS
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            'multipart/form-data; boundary="simple boundary"',
            _part('name="a"', b"x", "simple boundary"),
        ),
        ("application/octet-stream; charset=binary", b"\x00\x01_method\x02"),
        ("text/plain; charset=unknown-8bit", b"hello"),
        ("application/x-www-form-urlencoded; charset=x-no-such", b"a=b"),
        ("application/json", b'{"payment_method": "card", "a": {"_method": "x"}}'),
    ],
    ids=["rfc2046 boundary", "charset binary", "unknown-8bit", "unknown charset", "payment_method"],
)
async def test_round_two_legitimate_bodies_pass(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, content_type: str, body: bytes
) -> None:
    rig = await _rig(rig_factory, recorder, fast_path)
    token = await _post_only_key(rig)
    reply = await _post(rig, token, content_type, body)
    assert reply.status == 200, reply
    assert recorder.last().body_len == len(body)
