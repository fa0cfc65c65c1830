"""Path normalisation (docs/reference.md#the-proxy): hostile inputs and properties."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from keygate.gateway.errors import BadPath
from keygate.gateway.request.pathnorm import is_under, normalise_path

# The whole output alphabet: pchar, "/" and upper-case escapes (RFC 3986 §3.3).
_CANONICAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")
_ESCAPED_UNRESERVED = re.compile(r"%(?:4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9]|2D|2E|5F|7E)")

# Pieces that make paths interesting: dot segments in every spelling, escapes
# good and bad, separators and their encodings, controls, non-ASCII.
_PIECES = [
    "/", "/", "/", "a", "b", "~", ".", "..", "%2e", "%2E", "%2e%2e", ";", ";x",
    "%2f", "%2F", "%5c", "%41", "%7e", "%3a", "%25", "%", "%g1", "%4", "\\",
    "\x00", "%00", "\x1f", "\x7f", " ", "é", "日", "*", "?", "#",
]  # fmt: skip
hostile_paths = st.lists(st.sampled_from(_PIECES), max_size=12).map(lambda p: "/" + "".join(p))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/billing/invoices", "/billing/invoices"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/", "/a/b/"),
        ("/a/..", "/"),
        ("/a/b/../../c", "/c"),
        ("//", "/"),
        ("///a///b", "/a/b"),
        ("//evil.example/x", "/evil.example/x"),
        ("/%7Euser", "/~user"),
        ("/%7euser", "/~user"),
        ("/%41", "/A"),
        ("/a%3ab", "/a%3Ab"),
        ("/a%3Ab", "/a%3Ab"),
        ("/%25", "/%25"),
        ("/%252e%252e/x", "/%252e%252e/x"),
        ("/a/%2e/b", "/a/b"),
        ("/a/b/%2e%2e", "/a/"),
        ("/a/%2E./x", "/x"),
        ("/café", "/caf%C3%A9"),
        ("/日本", "/%E6%97%A5%E6%9C%AC"),
        ("/a b", "/a%20b"),
        ("/a\udcffb", "/a%FFb"),
        ("/.well-known/x", "/.well-known/x"),
        ("/...", "/..."),
        ("/a;b/c", "/a;b/c"),
        ("/a/.x;y", "/a/.x;y"),
        ("/**", "/**"),
    ],
)
def test_normalise_path_accepted_input_canonical_form(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a/b",
        "..",
        "*",
        "http://example.com/x",
        "/..",
        "/../x",
        "/a/../..",
        "/%2e%2e/",
        "/%2E%2E/x",
        "/%2E./x",
        "/a/%2e%2e/%2e%2e/x",
        "/a/%2F/b",
        "/a%2fb",
        "/a%5cb",
        "/a%5Cb",
        "/a\\b",
        "\\",
        "/\\..\\x",
        "/a\x00b",
        "/a%00b",
        "/..;/admin",
        "/a/..;x/b",
        "/a/.;/b",
        "/a/..;jsessionid=x",
        "/a/%2e%2e;/b",
        "/a/..%3b/b",
        "/a/..%3B/b",
        "/a\nb",
        "/a\rb",
        "/a\tb",
        "/a\x1fb",
        "/a\x7fb",
        "/%",
        "/a%",
        "/%4",
        "/%g1",
        "/%1g",
        "/a%%41",
        "/a\ud800b",
    ],
)
def test_normalise_path_hostile_input_bad_path(raw: str) -> None:
    with pytest.raises(BadPath):
        normalise_path(raw)


def test_normalise_path_plain_path_same_object() -> None:
    raw = "/billing/invoices/2024"
    assert normalise_path(raw) is raw


@given(st.one_of(st.text(), hostile_paths))
@example("/a/b/../../..")
def test_normalise_path_any_input_only_bad_path_raised(raw: str) -> None:
    with contextlib.suppress(BadPath):
        normalise_path(raw)


@given(hostile_paths)
def test_normalise_path_any_input_idempotent(raw: str) -> None:
    try:
        once = normalise_path(raw)
    except BadPath:
        return
    assert normalise_path(once) == once


@given(st.one_of(st.text(), hostile_paths))
def test_normalise_path_any_input_canonical_output(raw: str) -> None:
    try:
        out = normalise_path(raw)
    except BadPath:
        return
    assert out.startswith("/")
    assert "//" not in out
    assert "/./" not in out and "/../" not in out
    assert not out.endswith(("/.", "/.."))
    assert "%2F" not in out.upper() and "%5C" not in out.upper()
    assert ".;" not in out.split("/")
    assert _CANONICAL.fullmatch(out)
    assert not _ESCAPED_UNRESERVED.search(out)


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e%2e", "%2E"]), max_size=10))
def test_normalise_path_climb_above_root_bad_path_never_clamped(segments: list[str]) -> None:
    raw = "/" + "/".join(segments)
    depth, climbs = 0, False
    for segment in segments:
        if segment.lower() in ("..", "%2e%2e"):
            depth -= 1
            climbs = climbs or depth < 0
        elif segment not in ("", ".", "%2E"):
            depth += 1
    if climbs:
        with pytest.raises(BadPath):
            normalise_path(raw)
    else:
        assert len([s for s in normalise_path(raw).split("/") if s]) == depth


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("/anything", "/", True),
        ("/", "/", True),
        ("/billing", "/billing", True),
        ("/billing/", "/billing", True),
        ("/billing/x", "/billing", True),
        ("/billingx", "/billing", False),
        ("/bill", "/billing", False),
        ("/", "/billing", False),
        ("/billing/x", "/billing/", True),
        ("/billing", "/billing/", True),
        ("/billingx", "/billing/", False),
    ],
)
def test_is_under_prefix_segment_wise(path: str, prefix: str, expected: bool) -> None:
    assert is_under(path, prefix) is expected


@given(st.text(alphabet="ab/", max_size=8), st.text(alphabet="ab/", max_size=8))
def test_is_under_any_paths_agrees_with_segments(path: str, prefix: str) -> None:
    path, prefix = "/" + path, "/" + prefix.rstrip("/")
    want = prefix.rstrip("/").split("/")
    assert is_under(path, prefix) is (path.split("/")[: len(want)] == want or prefix == "/")
