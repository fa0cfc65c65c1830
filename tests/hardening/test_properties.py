"""Property tests (hypothesis) on the pure parts: what holds for every input, not just ours."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.config.settings import Route
from keygate.gateway.auth import keyformat
from keygate.gateway.auth.credentials import Sources, find_credential
from keygate.gateway.auth.policy import Policy, RouteTable
from keygate.gateway.errors import AmbiguousApiKey, BadPath, Unauthorized
from keygate.gateway.request.headers import (
    identity_headers,
    upstream_header_pairs,
)
from keygate.gateway.request.pathnorm import is_under, normalise_path
from keygate.gateway.upstream.exchange import response_headers

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- token parsing ------------------------------------------------------------------

key_ids = st.text(alphabet=keyformat.KEY_ID_ALPHABET, min_size=12, max_size=12)
secrets_ = st.text(alphabet=keyformat.BASE62, min_size=32, max_size=32)
prefixes = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=16)


@PROPS
@given(prefixes, key_ids, secrets_)
def test_props_token_made_is_token_parsed(prefix: str, key_id: str, secret: str) -> None:
    token = keyformat.make_token(prefix, key_id, secret)
    parsed = keyformat.parse(token, prefix)
    assert (parsed.prefix, parsed.key_id, parsed.secret) == (prefix, key_id, secret)


@PROPS
@given(key_ids, secrets_, st.data())
def test_props_token_any_single_substitution_is_refused(
    key_id: str, secret: str, data: st.DataObject
) -> None:
    token = keyformat.make_token("kg", key_id, secret)
    i = data.draw(st.integers(0, len(token) - 1))
    ch = data.draw(st.characters(codec="utf-8").filter(lambda c: c != token[i]))
    with pytest.raises(keyformat.TokenFormatError):
        keyformat.parse(token[:i] + ch + token[i + 1 :], "kg")


@PROPS
@given(key_ids, secrets_, st.data())
def test_props_token_adjacent_swap_is_refused(
    key_id: str, secret: str, data: st.DataObject
) -> None:
    token = keyformat.make_token("kg", key_id, secret)
    i = data.draw(st.integers(0, len(token) - 2))
    assume(token[i] != token[i + 1])
    swapped = token[:i] + token[i + 1] + token[i] + token[i + 2 :]
    with pytest.raises(keyformat.TokenFormatError):
        keyformat.parse(swapped, "kg")


@PROPS
@given(st.text(max_size=120) | st.text(alphabet="kg_0123456789abcdefABC", max_size=60))
def test_props_token_arbitrary_text_parses_only_if_canonical(text: str) -> None:
    try:
        parsed = keyformat.parse(text, "kg")
    except keyformat.TokenFormatError:
        return
    assert text == keyformat.make_token("kg", parsed.key_id, parsed.secret)


# --- credential finding -------------------------------------------------------------

token_values = st.sampled_from(
    [keyformat.make_token("kg", "0123456789ab", "a" * 32), keyformat.make_token("kg", "b" * 12,
     "B" * 32), "junk", "", "  "]
)
cred_headers = st.lists(
    st.tuples(st.sampled_from(["Authorization", "X-API-Key", "x-api-key", "AUTHORIZATION"]),
              st.tuples(st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Token "]),
                        token_values)),
    max_size=4,
)


@PROPS
@given(cred_headers)
def test_props_credential_one_distinct_value_or_refused(
    pairs: list[tuple[str, tuple[str, str]]],
) -> None:
    headers = CIMultiDictProxy(CIMultiDict([(n, s + v) for n, (s, v) in pairs]))
    sources = Sources.parse(("authorization", "x-api-key"))
    presented = set()
    for name, (scheme, value) in pairs:
        if name.lower() == "x-api-key":
            presented.add((scheme + value).strip())
        elif scheme.strip().lower() == "bearer":
            presented.add(value.strip())
    presented.discard("")
    try:
        cred = find_credential(headers, "", sources, "kg")
    except AmbiguousApiKey:
        assert len(presented) > 1
        return
    except Unauthorized:
        assert not presented
        return
    assert presented == {cred.token}
    # Whatever header carried it is dropped before forwarding.
    assert cred.drop_headers


# --- path normalisation -------------------------------------------------------------

path_chars = st.sampled_from(
    ["/", "/", "/", ".", "..", "a", "B", "%2e", "%2E", "%2f", "%5c", "%00", "%41", "%7e", "%",
     ";", "\\", "~", "é", " ", "%25", "?", "#", ":", "@", "%3B", "x"]
)
raw_paths = st.lists(path_chars, max_size=30).map(lambda parts: "/" + "".join(parts))

_PCHAR_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")


@PROPS
@given(raw_paths)
def test_props_path_normal_form_is_idempotent_and_safe(raw: str) -> None:
    try:
        normal = normalise_path(raw)
    except BadPath:
        return
    assert normalise_path(normal) == normal
    assert normal.startswith("/") and "//" not in normal
    segments = normal.split("/")[1:]
    assert ".." not in segments and "." not in segments
    low = normal.lower()
    assert "%2f" not in low and "%5c" not in low and "%00" not in low
    assert "\\" not in normal
    assert _PCHAR_PATH.fullmatch(normal), normal
    # Never climbs above "/": every ".." popped a real segment.
    assert not any(s.startswith("..;") for s in segments)


@PROPS
@given(raw_paths, raw_paths)
def test_props_path_prefix_covering_is_stable_under_normalisation(a: str, b: str) -> None:
    try:
        na, nb = normalise_path(a), normalise_path(b)
    except BadPath:
        return
    prefix = na.rstrip("/") or "/"
    # What is_under decides on the normal form is what the route and rules see.
    assert is_under(nb, prefix) == is_under(normalise_path(nb), prefix)
    if is_under(nb, prefix) and prefix != "/":
        assert nb == prefix or nb.startswith(prefix + "/")


# --- routes and rules ---------------------------------------------------------------

segments = st.text(alphabet="abAB09-._~", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..")
)
norm_paths = st.lists(segments, max_size=6).map(lambda s: "/" + "/".join(s)) | st.lists(
    segments, min_size=1, max_size=6
).map(lambda s: "/" + "/".join(s) + "/")


@PROPS
@given(st.lists(segments, min_size=1, max_size=3), norm_paths,
       st.sampled_from(["/**", "/*", "", "/*/x", "/**/x", "/x/**"]))
def test_props_rule_never_matches_outside_its_prefix(
    prefix_segments: list[str], path: str, tail: str
) -> None:
    prefix = "/" + "/".join(prefix_segments)
    policy = Policy({"g": [{"route": "*", "methods": ["*"], "paths": [prefix + tail]}]})
    if policy.allows(("g",), "r", "GET", path):
        assert is_under(path, prefix), (prefix + tail, path)


@PROPS
@given(st.lists(st.lists(segments, min_size=1, max_size=3), min_size=1, max_size=5,
                unique_by=lambda s: "/".join(s)), norm_paths)
def test_props_route_match_is_longest_covering_prefix(
    prefix_lists: list[list[str]], path: str
) -> None:
    prefixes = ["/" + "/".join(p) for p in prefix_lists]
    routes = [Route(name=f"r{i}", prefix=p, upstream="http://127.0.0.1:1")
              for i, p in enumerate(prefixes)]
    route = RouteTable(routes).match(path)
    covering = [p for p in prefixes if is_under(path, p)]
    if route is None:
        assert not covering
    else:
        assert is_under(path, route.prefix)
        assert len(route.prefix) == max(map(len, covering))


# --- header rewriting ---------------------------------------------------------------

name_parts = st.sampled_from(
    ["X-Keygate-User", "x-keygate-user", "X_Keygate_User", "X-KEYGATE-GROUPS",
     "x_keygate_key_id", "X-Keygate-Key-Name", "X-Keygate-Other", "X-Forwarded-For",
     "X_Forwarded_For", "X-Forwarded-Host", "X-Request-Id", "Connection", "Keep-Alive",
     "X-Plain", "Accept", "Authorization", "X-API-Key", "Te", "Upgrade", "Forwarded",
     "X_Real_IP", "X-Original-URL", "x-forwarded-prefix"]
)
forged = st.integers(0, 10**6).map(lambda n: f"FORGED{n}")
header_lists = st.lists(st.tuples(name_parts, forged), max_size=12)
connection_values = st.lists(name_parts, max_size=4).map(", ".join)
IDENTITY = identity_headers(key_id="keyid0000000", key_name="ci", user="alice", groups=["b", "a"])


@PROPS
@given(header_lists, connection_values)
def test_props_headers_no_client_keygate_value_and_identity_once(
    pairs: list[tuple[str, str]], connection: str
) -> None:
    raw = CIMultiDict(pairs)
    if connection:
        raw.add("Connection", connection)
    out = CIMultiDict(upstream_header_pairs(
        CIMultiDictProxy(raw), drop=("Authorization", "X-API-Key"), identity=IDENTITY,
        client_ip="192.0.2.1", proto="http", host="gw.example", request_id="rid-1",
    ))
    names = [k.lower() for k in out]
    for name, value in out.items():
        low = name.lower().replace("_", "-")
        if low.startswith("x-keygate-") or low in ("x-forwarded-host", "x-request-id",
                                                    "x-forwarded-proto", "forwarded",
                                                    "x-real-ip", "x-original-url",
                                                    "x-forwarded-prefix"):
            assert "FORGED" not in value, (name, value)
    for name, value in IDENTITY.items():
        assert names.count(name.lower()) == 1
        assert out[name] == value
    assert names.count("x-forwarded-for") == 1
    assert out["X-Forwarded-For"].endswith("192.0.2.1")
    assert not any("_" in n and n.replace("_", "-").startswith("x-keygate") for n in names)
    for hop in ("connection", "keep-alive", "te", "upgrade", "authorization", "x-api-key"):
        assert hop not in names


@PROPS
@given(header_lists)
def test_props_headers_public_route_has_no_identity(pairs: list[tuple[str, str]]) -> None:
    out = upstream_header_pairs(
        CIMultiDictProxy(CIMultiDict(pairs)), drop=(), identity=None, client_ip="192.0.2.1",
        proto="https", host=None, request_id="rid-2",
    )
    assert not [k for k, _ in out if k.lower().replace("_", "-").startswith("x-keygate-")]


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["Set-Cookie", "Connection", "X-Hop", "Keep-Alive",
                                           "Transfer-Encoding", "X-Kept"]), forged), max_size=10))
def test_props_response_headers_keep_repeats_drop_hops(pairs: list[tuple[str, str]]) -> None:
    raw = CIMultiDict(pairs)
    got, _ = response_headers([(n.encode(), v.encode("utf-8", "surrogatepass")) for n, v in pairs])
    out = CIMultiDict(got)
    listed = {t.strip().lower() for v in raw.getall("Connection", ()) for t in v.split(",")}
    for name in out:
        assert name.lower() not in {"connection", "keep-alive", "transfer-encoding"} | listed
    if "set-cookie" not in listed:
        assert out.getall("Set-Cookie", []) == raw.getall("Set-Cookie", [])
