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
from tests.support.raw import bearer, http
from tests.support.upstreams import MIB, Recorder

FRONT_ENDS = pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
POST_ONLY = [{"route": "*", "methods": ["GET", "POST"], "paths": ["/api/**"]}]


async def _rig(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, **route: Any
) -> Rig:
    routes = (Route(name="default", prefix="/", upstream=recorder.url, **route),)
    return await rig_factory(routes=routes, server={"fast_path": fast_path})


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
        ([("Content-Type", "text/plain")], b"_method=DELETE"),
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
