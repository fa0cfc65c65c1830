"""Method-override detection (request/overrides.py, request/scanners.py) — pure, no server."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.gateway.errors import BadRequest, TooLarge, UnsupportedMediaType
from keygate.gateway.request.overrides import form_scanner, header_overrides, query_overrides
from keygate.gateway.request.scanners import (
    MAX_DECODED,
    OVERLONG,
    JsonObject,
    Multipart,
    method_values,
)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("name", "value", "found"),
    [
        ("X-HTTP-Method-Override", "DELETE", ["DELETE"]),
        ("x-http-method-override", "delete", ["DELETE"]),
        ("X_HTTP_METHOD_OVERRIDE", "DELETE", ["DELETE"]),
        ("X-HTTP-Method", "PUT", ["PUT"]),
        ("X_Http_Method", "PUT", ["PUT"]),
        ("X-Method-Override", " patch ", ["PATCH"]),
        ("X-Method_Override", "PATCH", ["PATCH"]),
        ("X-HTTP-Method-Override", "PUT, DELETE", ["PUT", "DELETE"]),
        ("X-HTTP-Method-Override", "", []),
        ("X-Method", "DELETE", []),
        ("X-HTTP-Method-Overrides", "DELETE", []),
        ("Method", "DELETE", []),
    ],
)
def test_header_overrides_any_case_and_spelling(name: str, value: str, found: list[str]) -> None:
    assert header_overrides(headers((name, value), ("Accept", "x/y"))) == found


def test_header_overrides_repeated_headers_each_count() -> None:
    found = header_overrides(
        headers(("X-HTTP-Method-Override", "PUT"), ("x-http-method-override", "DELETE"))
    )
    assert found == ["PUT", "DELETE"]


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("_method=DELETE", ["DELETE"]),
        ("a=1&_method=delete&b=2", ["DELETE"]),
        ("%5Fmethod=DELETE", ["DELETE"]),
        ("%5fmethod=DELETE", ["DELETE"]),
        ("_%6Dethod=PUT", ["PUT"]),
        ("%5F%6D%65%74%68%6F%64=PUT", ["PUT"]),
        (".method=PATCH", ["PATCH"]),  # PHP reads "." in a name as "_"
        ("[method=PATCH", ["PATCH"]),
        ("+_method=DELETE", ["DELETE"]),  # PHP drops leading spaces
        ("%20%20_method=DELETE", ["DELETE"]),
        ("+" * 5000 + "_method=DELETE", ["DELETE"]),
        ("_METHOD=delete", ["DELETE"]),
        ("a=1;_method=DELETE", ["DELETE"]),  # ";" separates too (Rack, old CGI)
        ("_method=D%45LETE", ["DELETE"]),
        ("_method=PUT,DELETE", ["PUT", "DELETE"]),
        ("_method=", []),
        ("_method", []),
        ("x=_method", []),
        ("_methodx=DELETE", []),
        ("method=DELETE", []),
        ("a_method=DELETE", []),
        ("", []),
    ],
)
def test_query_overrides(query: str, found: list[str]) -> None:
    assert query_overrides(query) == found


def test_method_values_bounds_a_long_value() -> None:
    assert method_values("x" * 10) == ["X" * 10]
    # Too long to be read: answered as a method no rule allows (padding
    # stripped by a framework could hide a real one).
    assert query_overrides("_method=" + "A" * 10_000) == [OVERLONG]
    assert query_overrides("_method=" + "+" * 64 + "DELETE") == [OVERLONG]


def _scan(content_type: str | None, body: bytes, cuts: list[int], coding: str | None = None):
    scanner = form_scanner(content_type, coding)
    assert scanner is not None
    found: list[str] = []
    start = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(body):
            found += scanner.feed(body[start:cut])
            start = cut
    found += scanner.feed(body[start:])
    return found + scanner.finish()


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "XyZ", eol: bytes = b"\r\n"):
    out = b""
    for header, content in parts:
        out += b"--" + boundary.encode() + eol + header.encode() + eol + eol + content + eol
    return out + b"--" + boundary.encode() + b"--" + eol


URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=XyZ"


@pytest.mark.parametrize(
    ("header", "found"),
    [
        ('Content-Disposition: form-data; name="_method"', ["DELETE"]),
        ("Content-Disposition: form-data; name=_method", ["DELETE"]),
        ('content-disposition: form-data; NAME="_method"', ["DELETE"]),
        ('Content-Disposition: form-data; name=".method"', ["DELETE"]),
        ('Content-Disposition: form-data; name="%5Fmethod"', ["DELETE"]),
        ("Content-Disposition: form-data; name*=UTF-8''%5Fmethod", ["DELETE"]),
        ('Content-Disposition: form-data; name="_m\\ethod"', ["DELETE"]),
        ('Content-Disposition: form-data;\r\n name="_method"', ["DELETE"]),
        ('Content-Type: text/plain\r\nContent-Disposition: form-data; name="_method"', ["DELETE"]),
        ('Content-Disposition: form-data; filename="_method"', []),
        ('Content-Disposition: form-data; name="method"', []),
        ('Content-Disposition: form-data; name="other"', []),
    ],
)
def test_multipart_override_parts(header: str, found: list[str]) -> None:
    body = _multipart([('Content-Disposition: form-data; name="a"', b"x"), (header, b"DELETE")])
    assert _scan(MULTIPART, body, []) == found


def test_multipart_with_bare_line_feeds_and_padding() -> None:
    body = (
        b"preamble\n--XyZ  \t\nContent-Disposition: form-data; name=\"_method\"\n\nPUT\n"
        b"--XyZ\n\n\n--XyZ--\nepilogue --XyZ\nContent-Disposition: form-data; name=_method\n\nX"
    )
    # Parts after the close delimiter count too: Django reads them.
    assert _scan("multipart/mixed; boundary=\"XyZ\"", body, []) == ["PUT", "X"]


def test_multipart_without_a_closing_delimiter_still_counts() -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE'
    assert _scan(MULTIPART, body, []) == ["DELETE"]
    body += b"\r\n--XyZ"
    assert _scan(MULTIPART, body, []) == ["DELETE"]


def test_multipart_an_empty_part_then_a_delimiter() -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n--XyZ\r\n'
    body += b'Content-Disposition: form-data; name="_method"\r\n\r\nPUT\r\n--XyZ--'
    assert _scan(MULTIPART, body, []) == ["PUT"]


def test_multipart_part_head_is_bounded() -> None:
    body = b"--XyZ\r\nX-Junk: " + b"a" * 20_000
    with pytest.raises(BadRequest):
        _scan(MULTIPART, body, [])


def test_multipart_big_file_then_override_in_bounded_memory() -> None:
    scanner = Multipart(b"XyZ")
    found = scanner.feed(b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n')
    block = bytes(range(256)) * 256
    # 4 MiB of file content, with bytes that start a delimiter (RFC 2046 §5.1.1:
    # a whole one never appears inside a part; wherever it does, it counts).
    for _ in range(64):
        found += scanner.feed(block + b"\r\n--Xy" + b"a--XyY\r\n-")
        assert len(scanner._buffer) < 64  # type: ignore[attr-defined]
    found += scanner.feed(b'\r\n--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\n')
    found += scanner.feed(b"DELETE\r\n--XyZ--\r\n")
    assert found + scanner.finish() == ["DELETE"]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/x-www-form-urlencoded; charset=utf-8",
        "APPLICATION/X-WWW-FORM-URLENCODED",
        "application/x-www-form-urlencodedx",
        "text/plain",
        "application/octet-stream",
        "*/*",
        "application/json",
        "multipart/form-data",
    ],
)
def test_every_body_is_read_as_a_form_too(content_type: str | None) -> None:
    # The WSGI method-override middleware parses any POST body as a form, and
    # @fastify/formbody matches the type by prefix.
    assert _scan(content_type, b"a=1&_method=DELETE", []) == ["DELETE"]


def test_multipart_and_json_bodies_are_also_read_as_such() -> None:
    multipart = _multipart([('Content-Disposition: form-data; name="_method"', b"PUT")])
    assert _scan('multipart/related; boundary="XyZ"', multipart, []) == ["PUT"]
    assert _scan("application/vnd.api+json; charset=utf-8", b'{"_method":"PATCH"}', []) == [
        "PATCH"
    ]


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, gzip", "compress"])
def test_form_scanner_refuses_a_coding_it_cannot_read(coding: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        form_scanner(URLENCODED, coding)


@pytest.mark.parametrize(
    "encode", [gzip.compress, zlib.compress], ids=["gzip", "deflate"]
)
def test_compressed_forms_are_scanned_decoded(encode) -> None:  # type: ignore[no-untyped-def]
    body = encode(b"a=1&_method=DELETE&b=" + b"x" * 100_000)
    for coding in ("gzip", "deflate"):
        assert _scan(URLENCODED, body, [1, 7, 100], coding) == ["DELETE"]
    multipart = encode(_multipart([('Content-Disposition: form-data; name="_method"', b"PUT")]))
    assert _scan(MULTIPART, multipart, [3], "gzip") == ["PUT"]


def test_compressed_form_bomb_is_bounded() -> None:
    bomb = gzip.compress(b"a" * (MAX_DECODED + 1024))
    with pytest.raises(TooLarge):
        _scan(URLENCODED, bomb, [], "gzip")


def test_corrupt_compressed_form_is_refused() -> None:
    with pytest.raises(BadRequest):
        _scan(URLENCODED, b"\x1f\x8b\x08\x00garbage-garbage", [], "gzip")


FIELD_NAMES = st.sampled_from(
    ["a", "_method", "%5Fmethod", ".method", "x_method", "b", "+_method", "_m", "methods"]
)
FIELDS = st.lists(
    st.tuples(FIELD_NAMES, st.sampled_from(["", "GET", "put", "DELETE", "x%20y", "a+b"])),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(fields=FIELDS, cuts=st.lists(st.integers(0, 200), max_size=6), sep=st.sampled_from("&;"))
def test_urlencoded_streaming_finds_what_one_pass_finds(
    fields: list[tuple[str, str]], cuts: list[int], sep: str
) -> None:
    body = sep.join(f"{n}={v}" for n, v in fields).encode()
    expected = [
        v.replace("%20", " ").replace("+", " ").upper().strip()
        for n, v in fields
        if n in ("_method", "%5Fmethod", ".method", "+_method") and v.strip()
    ]
    assert _scan(URLENCODED, body, cuts) == [e for e in expected if e]
    assert _scan(URLENCODED, body, []) == _scan(URLENCODED, body, cuts)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.tuples(st.sampled_from(["a", "_method", "f"]), st.binary(max_size=40)), max_size=5
    ),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    eol=st.sampled_from([b"\r\n", b"\n"]),
)
def test_multipart_streaming_finds_what_one_pass_finds(
    parts: list[tuple[str, bytes]], cuts: list[int], eol: bytes
) -> None:
    body = _multipart(
        [(f'Content-Disposition: form-data; name="{n}"', c) for n, c in parts], eol=eol
    )
    assert _scan(MULTIPART, body, cuts) == _scan(MULTIPART, body, [])
    if all(b"--XyZ" not in content for _, content in parts):
        expected = [
            method
            for name, content in parts
            if name == "_method"
            for method in method_values(content.decode("latin-1"))
        ]
        assert _scan(MULTIPART, body, cuts) == expected


JSON = "application/json"


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b'{"_method":"DELETE"}', ["DELETE"]),
        (b' {\n "a" : {"_method": "PUT"}, "_method" : "del\\u0045te" } ', ["DELETE"]),
        (b'{"a":1,"_method":"PATCH","z":[1,{"b":"}]"}]}', ["PATCH"]),
        (b'{"\\u005fmethod":"PUT"}', ["PUT"]),
        (b'{"a":"x\\\\", "_method":"PUT"}', ["PUT"]),
        (b'{"_method":"PUT","_method":"DELETE"}', ["PUT", "DELETE"]),
        (b'{"b":"\\"_method\\":\\"DELETE"}', []),  # inside a string value
        (b'{"a":{"_method":"DELETE"}}', []),  # not the top level
        (b'[{"_method":"DELETE"}]', []),
        (b'{"_method":123}', [OVERLONG]),  # not a string: no rule allows it
        (b'{"_method":["DELETE"]}', [OVERLONG]),
        (b'\xef\xbb\xbf {"_method":"PUT"}', ["PUT"]),
        (b'{"_method":"DELETE"', ["DELETE"]),  # unfinished document: still checked
        (b"not json _method=DELETE", []),
    ],
)
def test_json_top_level_override(body: bytes, found: list[str]) -> None:
    for cuts in ([], list(range(len(body))), [3, 9, 17]):
        assert _scan(JSON, body, cuts) == found, cuts


def test_json_large_document_is_skipped_fast_and_bounded() -> None:
    scanner = JsonObject()
    found = scanner.feed(b'{"data": [')
    item = b'{"k": "v\\"}", "n": [1, 2, {"x": null}]}, ' * 1000
    for _ in range(100):  # ~4 MB of nested values
        found += scanner.feed(item)
        assert len(scanner._buffer) < 64  # type: ignore[attr-defined]
    found += scanner.feed(b'{}], "_method": "DELETE"}')
    assert found + scanner.finish() == ["DELETE"]
