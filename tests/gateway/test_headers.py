"""Header rewriting (gateway.headers): hostile inputs as tables, plus properties."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.gateway.request.headers import (
    HOP_BY_HOP,
    RequestIds,
    identity_headers,
    request_id_or_new,
    upstream_header_pairs,
)
from keygate.gateway.upstream.exchange import response_headers

Pairs = list[tuple[str, str]]

IDENTITY = identity_headers(key_id="3k9x2m0qzt7a", key_name="sync", user="alice", groups=["b", "a"])
IDENTITY_OUT: Pairs = [
    ("x-keygate-key-id", "3k9x2m0qzt7a"),
    ("x-keygate-key-name", "sync"),
    ("x-keygate-user", "alice"),
    ("x-keygate-groups", "a,b"),
]
DEFAULTS: dict[str, Any] = {
    "drop": (),
    "identity": None,
    "client_ip": "10.0.0.9",
    "proto": "https",
    "host": "gw.example",
    "request_id": "rid-1",
}


def forwarded(xff: str = "10.0.0.9") -> Pairs:
    return [
        ("x-forwarded-for", xff),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "gw.example"),
        ("x-request-id", "rid-1"),
    ]


def upstream(pairs: Pairs, **overrides: Any) -> Pairs:
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    out = upstream_header_pairs(headers, **{**DEFAULTS, **overrides})
    return [(name.lower(), value) for name, value in out]


@pytest.mark.parametrize(
    ("pairs", "overrides", "expected"),
    [
        pytest.param(
            [
                ("Connection", "keep-alive"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"),
                ("Proxy-Authenticate", "Basic"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Accept", "*/*"),
            ],
            {},
            [("accept", "*/*"), *forwarded()],
            id="hop-by-hop",
        ),
        pytest.param(
            [
                ("Connection", "close, X-Drop"),
                ("Connection", "x-also"),
                ("X-Drop", "1"),
                ("X-Also", "2"),
                ("X-Keep", "3"),
            ],
            {},
            [("x-keep", "3"), *forwarded()],
            id="named-in-connection",
        ),
        pytest.param(
            [
                ("Connection", "X-Forwarded-For, x-request-id, X-Keygate-User, x-forwarded-host"),
                ("X-Forwarded-For", "203.0.113.7"),
            ],
            {"identity": IDENTITY},
            [*IDENTITY_OUT, *forwarded("203.0.113.7, 10.0.0.9")],
            id="connection-cannot-drop-keygate-headers",
        ),
        pytest.param(
            [
                ("Authorization", "Bearer kg_a"),
                ("authorization", "Bearer kg_b"),
                ("X-API-Key", "other"),
            ],
            {"drop": {"AUTHORIZATION"}},
            [("x-api-key", "other"), *forwarded()],
            id="drop-every-instance-case-insensitively",
        ),
        pytest.param(
            [("Authorization", "Basic dXA6c3RyZWFt"), ("x-api-key", "kg_token")],
            {"drop": ("X-API-Key",)},
            [("authorization", "Basic dXA6c3RyZWFt"), *forwarded()],
            id="other-authorization-passes",
        ),
        pytest.param(
            [
                ("X-Keygate-User", "root"),
                ("x-keygate-groups", "admin"),
                ("X_Keygate_User", "root"),
                ("X_KEYGATE_GROUPS", "admin"),
                ("x-keygate-anything", "1"),
                ("X-Keygated", "kept"),
            ],
            {"identity": IDENTITY},
            [("x-keygated", "kept"), *IDENTITY_OUT, *forwarded()],
            id="forged-identity",
        ),
        pytest.param(
            [("X-Keygate-User", "root")],
            {},
            forwarded(),
            id="forged-identity-public-route",
        ),
        pytest.param(
            [
                ("X_Forwarded_For", "1.1.1.1"),
                ("x_forwarded_proto", "http"),
                ("X_FORWARDED_HOST", "evil"),
                ("X_Request_Id", "forged"),
                ("X_Custom", "kept"),
            ],
            {},
            forwarded(),
            id="underscore-names-dropped",
        ),
        pytest.param(
            [
                ("X_Forwarded_For", "1.1.1.1"),
                ("x_forwarded_proto", "http"),
                ("X_FORWARDED_HOST", "evil"),
                ("X_Request_Id", "forged"),
                ("SCRIPT_NAME", "/public"),
                ("Path_Info", "/admin"),
                ("Remote_User", "admin"),
                ("X_Custom", "kept"),
            ],
            {"underscores": True},
            [("x_custom", "kept"), *forwarded()],
            id="underscore-names-kept-but-keygate-s-own",
        ),
        pytest.param(
            [
                ("X-Forwarded-Proto", "http"),
                ("X-Forwarded-Host", "evil.example"),
                ("X-Request-Id", "forged"),
            ],
            {},
            forwarded(),
            id="forwarded-replaced",
        ),
        pytest.param(
            [
                ("X-Forwarded-For", "1.1.1.1"),
                ("X-Forwarded-For", " 2.2.2.2, 3.3.3.3 "),
                ("X-Forwarded-For", ""),
            ],
            {},
            forwarded("1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"),
            id="forwarded-for-appended",
        ),
        pytest.param(
            [("Host", "gw.example"), ("Expect", "100-continue")],
            {"host": None},
            [
                ("x-forwarded-for", "10.0.0.9"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "rid-1"),
            ],
            id="host-expect-removed-no-forwarded-host",
        ),
        pytest.param(
            [("Content-Length", "12"), ("Content-Type", "text/plain")],
            {},
            [("content-type", "text/plain"), *forwarded()],
            id="framing-never-forwarded",
        ),
        pytest.param(
            [("Content-Length", "12"), ("Transfer-Encoding", "chunked")],
            {},
            forwarded(),
            id="content-length-dropped-with-transfer-encoding",
        ),
        pytest.param(
            [("Cookie", "a=1"), ("Accept", "text/html"), ("Cookie", "b=2")],
            {},
            [("cookie", "a=1"), ("accept", "text/html"), ("cookie", "b=2"), *forwarded()],
            id="repeated-kept-in-order",
        ),
        pytest.param(
            [],
            {
                "identity": {"X-Keygate-User": "eve\r\nX-Admin: 1", "X-Keygate-Key-Id": "k\x00"},
                "host": "gw.example\n",
            },
            [
                ("x-keygate-user", "eve  X-Admin: 1"),
                ("x-keygate-key-id", "k "),
                ("x-forwarded-for", "10.0.0.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "gw.example "),
                ("x-request-id", "rid-1"),
            ],
            id="no-crlf-injection",
        ),
    ],
)
def test_upstream_header_pairs_table(
    pairs: Pairs, overrides: dict[str, Any], expected: Pairs
) -> None:
    assert upstream(pairs, **overrides) == expected


def test_upstream_header_pairs_foreign_identity_name_raises() -> None:
    with pytest.raises(ValueError, match="identity header"):
        upstream([], identity={"X-Admin": "1"})


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        pytest.param(
            [
                ("Connection", "keep-alive"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Trailer", "X-T"),
                ("Proxy-Authenticate", "Basic"),
                ("Upgrade", "h2c"),
                ("Content-Type", "text/plain"),
            ],
            [("content-type", "text/plain")],
            id="hop-by-hop",
        ),
        pytest.param(
            [("Connection", "X-Secret"), ("X-Secret", "1"), ("X-Public", "2")],
            [("x-public", "2")],
            id="named-in-connection",
        ),
        pytest.param(
            [("Set-Cookie", "a=1; Path=/"), ("X-A", "1"), ("Set-Cookie", "b=2; HttpOnly")],
            [("set-cookie", "a=1; Path=/"), ("x-a", "1"), ("set-cookie", "b=2; HttpOnly")],
            id="set-cookie-repeated",
        ),
        pytest.param(
            [("Content-Length", "5"), ("Content-Encoding", "gzip"), ("Location", "/x?y=%2F")],
            [("content-length", "5"), ("content-encoding", "gzip"), ("location", "/x?y=%2F")],
            id="content-length-kept",
        ),
        pytest.param(
            [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            [],
            id="content-length-dropped-with-transfer-encoding",
        ),
    ],
)
def test_response_headers_table(pairs: Pairs, expected: Pairs) -> None:
    out, _ = response_headers([(n.encode(), v.encode()) for n, v in pairs])
    assert [(name.lower(), value) for name, value in out] == expected


@pytest.mark.parametrize(
    "value", ["a", "req-1.2:3@host/x+y=z_Z", "A" * 200, "0123456789abcdef0123456789abcdef"]
)
def test_request_id_or_new_valid_kept(value: str) -> None:
    assert request_id_or_new(value, RequestIds()) == value


@pytest.mark.parametrize(
    "value",
    [None, "", "A" * 201, "has space", "line\nbreak", "tab\t", "ünicode", "a,b", "a;b", "x\r\n"],
)
def test_request_id_or_new_invalid_replaced(value: str | None) -> None:
    ids = RequestIds()
    new = request_id_or_new(value, ids)
    assert re.fullmatch(r"[0-9a-f]{32}", new)
    assert new != request_id_or_new(value, ids)


def test_identity_headers_groups_sorted_comma_separated() -> None:
    assert (
        identity_headers(key_id="k", key_name="n", user="u", groups={"z", "a", "m"})[
            "X-Keygate-Groups"
        ]
        == "a,m,z"
    )


_NAMES = st.sampled_from(
    [
        *HOP_BY_HOP,
        "X-Keygate-User",
        "x_keygate_groups",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "X-Request-Id",
        "Host",
        "Authorization",
        "X-Api-Key",
        "Accept",
        "X-Custom",
        "X-Keygated",
    ]
)
_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@given(
    pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=12),
    connection=st.lists(_NAMES, max_size=4),
    user=st.text(max_size=10),
)
def test_upstream_header_pairs_properties(
    pairs: Pairs, connection: list[str], user: str
) -> None:
    pairs = [*pairs, ("Connection", ", ".join(connection))]
    identity = identity_headers(key_id="k", key_name="n", user=user, groups=["g"])
    out = CIMultiDict(upstream_header_pairs(
        CIMultiDictProxy(CIMultiDict(pairs)),
        drop={"authorization"},
        identity=identity,
        client_ip="10.0.0.9",
        proto="https",
        host="gw.example",
        request_id="rid",
    ))
    names = [name.lower() for name in out]
    assert not HOP_BY_HOP & set(names)
    assert "authorization" not in names
    assert "host" not in names
    assert not [n for n in names if "_" in n and n.replace("_", "-").startswith("x-keygate-")]
    for name in identity:
        assert out.getall(name) == [out[name]]
    assert out["X-Forwarded-For"].endswith("10.0.0.9")
    assert out["X-Request-Id"] == "rid"
    assert all("\r" not in v and "\n" not in v and "\x00" not in v for v in out.values())


def test_request_id_sources_never_share_ids() -> None:
    # One source per app, made in each worker process after the fork.
    first, second = RequestIds(), RequestIds()
    ids = {first.new() for _ in range(1000)} | {second.new() for _ in range(1000)}
    assert len(ids) == 2000
    assert first.new()[:16] != second.new()[:16]
