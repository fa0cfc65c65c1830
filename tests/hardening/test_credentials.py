"""Credentials (OWASP API2): hostile key values never reach cache, store or upstream."""

from __future__ import annotations

import base64

import pytest

from keygate.config.settings import Route
from keygate.gateway.auth import keyformat
from keygate.gateway.service.imports import read
from keygate.gateway.service.imports.check import Defaults
from tests.support.gateway import Rig, RigFactory
from tests.support.polling import wait_for
from tests.support.raw import bearer, http
from tests.support.secrets import secret

VALID_SHAPE = keyformat.make_token("kg", "0123456789ab", "abcdefghijklmnopqrstuvwxyzABCDEF")


def _mutations() -> list[tuple[str, str]]:
    token = VALID_SHAPE
    body = token[: -keyformat.CHECKSUM_LEN]
    other_prefix = keyformat.make_token("xx", "0123456789ab", "abcdefghijklmnopqrstuvwxyzABCDEF")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    non_b62 = body[:-1] + "-"
    return [
        ("wrong_prefix", other_prefix),
        ("no_prefix", token[3:]),
        ("too_short", token[:-1]),
        ("too_long", token + "0"),
        ("non_base62", non_b62 + keyformat.checksum(non_b62)),
        ("upper_case_key_id", token.replace("abcdef", "ABCDEF", 1)),
        ("bad_checksum", flipped),
        ("ten_kib", "kg_" + "a" * 10240),
        ("inner_space", token[:20] + " " + token[20:]),
        ("same_key_twice_in_one_value", f"{token}, {token}"),
        ("checksum_only", keyformat.checksum("kg_")),
    ]


MALFORMED = _mutations()


def _counters(rig: Rig) -> tuple[int, int]:
    # Store lookups and cache admissions; a malformed token may cost a cache
    # miss (the hot path looks a digest up before checking the format).
    return rig.gw.verifier.lookups, rig.gw.cache.hits


@pytest.mark.parametrize("where", ["bearer", "x-api-key"])
@pytest.mark.parametrize(("case", "value"), MALFORMED, ids=[c for c, _ in MALFORMED])
async def test_credentials_malformed_key_is_401_without_lookup(
    rig: Rig, where: str, case: str, value: str
) -> None:
    header = ("Authorization", f"Bearer {value}") if where == "bearer" else ("X-API-Key", value)
    before = _counters(rig)
    reply = await rig.exchange(http("GET", "/anything", [header]))
    assert reply.status == 401
    assert reply.code == "invalid_api_key"
    assert reply.header("WWW-Authenticate") == 'Bearer realm="keygate"'
    assert _counters(rig) == before
    assert rig.up.seen == []


@pytest.mark.parametrize(
    "raw_value",
    [
        # Valid length, one non-ASCII character (UTF-8 on the wire).
        (VALID_SHAPE[:10] + "é" + VALID_SHAPE[12:]).encode(),
        # A lone latin-1 byte that is not UTF-8.
        VALID_SHAPE[:-1].encode() + b"\xff",
        "kg_ключ_ключ".encode(),
    ],
    ids=["utf8", "latin1_byte", "cyrillic"],
)
async def test_credentials_non_ascii_key_is_refused_without_lookup(
    rig: Rig, raw_value: bytes
) -> None:
    before = _counters(rig)
    request = b"GET /x HTTP/1.1\r\nHost: k\r\nX-API-Key: " + raw_value + b"\r\n\r\n"
    reply = await rig.exchange(request)
    assert reply.status in (400, 401)
    assert _counters(rig) == before
    assert rig.up.seen == []


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Authorization", "Bearer")],
        [("Authorization", "Bearer ")],
        [("Authorization", "Bearer    ")],
        [("X-API-Key", "")],
        [("X-API-Key", "   ")],
        [("Authorization", "Basic dXNlcjpwYXNz")],  # not a keygate source: meant upstream
        [("Authorization", "Token abc")],
        [("Api-Key", VALID_SHAPE)],
    ],
    ids=["none", "bearer_bare", "bearer_empty", "bearer_spaces", "xkey_empty", "xkey_spaces",
         "basic_not_source", "other_scheme", "other_header"],
)
async def test_credentials_missing_key_is_401_missing(
    rig: Rig, headers: list[tuple[str, str]]
) -> None:
    before = _counters(rig)
    reply = await rig.exchange(http("GET", "/x", headers))
    assert reply.status == 401
    assert reply.code == "missing_api_key"
    assert reply.header("WWW-Authenticate") == 'Bearer realm="keygate"'
    assert _counters(rig) == before
    assert rig.up.seen == []


@pytest.mark.parametrize(
    "make_header",
    [
        lambda t: ("X-API-Key", f"   {t}   "),
        lambda t: ("X-API-Key", f"\t{t}\t"),
        lambda t: ("Authorization", f"Bearer   {t}  "),
        lambda t: ("Authorization", f"bearer {t}"),
        lambda t: ("Authorization", f"BEARER {t}"),
    ],
    ids=["xkey_spaces", "xkey_tabs", "bearer_spaces", "bearer_lower", "bearer_upper"],
)
async def test_credentials_padded_valid_key_is_accepted_and_removed(
    rig: Rig, token: str, make_header: object
) -> None:
    header = make_header(token)  # type: ignore[operator]
    reply = await rig.exchange(http("GET", "/padded", [header]))
    assert reply.status == 200
    seen = rig.up.last()
    assert seen.values("Authorization") == [] and seen.values("X-API-Key") == []
    assert token not in repr(seen.headers)


@pytest.mark.parametrize(
    "layout",
    ["two_x_api_key", "bearer_and_x_api_key", "two_authorization", "x_api_key_and_bearer"],
)
async def test_credentials_same_key_twice_is_one_credential_and_removed(
    rig: Rig, token: str, layout: str
) -> None:
    headers = {
        "two_x_api_key": [("X-API-Key", token), ("X-API-Key", token)],
        "bearer_and_x_api_key": [bearer(token), ("X-API-Key", token)],
        "two_authorization": [bearer(token), bearer(token)],
        "x_api_key_and_bearer": [("X-API-Key", token), bearer(token)],
    }[layout]
    reply = await rig.exchange(http("GET", "/twice", headers))
    assert reply.status == 200
    assert token not in repr(rig.up.last().headers)


@pytest.mark.parametrize(
    "layout", ["two_x_api_key", "bearer_and_x_api_key", "two_authorization", "valid_and_junk"]
)
async def test_credentials_different_keys_are_400_ambiguous_without_lookup(
    rig: Rig, token: str, layout: str
) -> None:
    other = await rig.key()
    headers = {
        "two_x_api_key": [("X-API-Key", token), ("X-API-Key", other)],
        "bearer_and_x_api_key": [bearer(token), ("X-API-Key", other)],
        "two_authorization": [bearer(token), bearer(other)],
        "valid_and_junk": [bearer(token), ("X-API-Key", "junk")],
    }[layout]
    before = _counters(rig)
    reply = await rig.exchange(http("GET", "/ambiguous", headers))
    assert reply.status == 400
    assert reply.code == "ambiguous_api_key"
    assert _counters(rig) == before
    assert rig.up.seen == []


@pytest.mark.parametrize("param", ["api_key", "API_KEY", "api%5Fkey", "key", "token"])
async def test_credentials_key_in_query_when_source_off_is_401_missing(
    rig: Rig, token: str, param: str
) -> None:
    before = _counters(rig)
    reply = await rig.exchange(http("GET", f"/q?{param}={token}", []))
    assert reply.status == 401
    assert reply.code == "missing_api_key"
    assert _counters(rig) == before
    assert rig.up.seen == []


async def test_credentials_query_source_key_is_removed_before_forwarding(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(sources=("authorization", "query:api_key"))
    token = await rig.key()
    reply = await rig.exchange(http("GET", f"/q?a=1&api_key={token}&b=%2F", []))
    assert reply.status == 200
    assert rig.up.last().query == "a=1&b=%2F"


async def test_credentials_query_source_two_different_keys_ambiguous(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(sources=("authorization", "query:api_key"))
    one, two = await rig.key(), await rig.key()
    before = _counters(rig)
    reply = await rig.exchange(http("GET", f"/q?api_key={one}", [bearer(two)]))
    assert reply.status == 400 and reply.code == "ambiguous_api_key"
    assert _counters(rig) == before and rig.up.seen == []


@pytest.mark.parametrize(
    "password", ["", "short", "x" * 10240, "é" * 38], ids=["empty", "short", "10kib", "non_ascii"]
)
async def test_credentials_basic_source_malformed_is_401_without_lookup(
    rig_factory: RigFactory, password: str
) -> None:
    rig = await rig_factory(sources=("basic",))
    raw = base64.b64encode(f"0123456789ab:{password}".encode()).decode()
    secret(raw)
    before = _counters(rig)
    reply = await rig.exchange(http("GET", "/b", [("Authorization", f"Basic {raw}")]))
    assert reply.status == 401 and reply.code == "invalid_api_key"
    assert _counters(rig) == before and rig.up.seen == []


async def test_credentials_forged_key_id_costs_no_lookup(rig: Rig) -> None:
    # A valid checksum over a key id no key has: refused from memory.
    for _ in range(5):
        forged = secret(keyformat.generate("kg")[0])
        reply = await rig.exchange(http("GET", "/u", [bearer(forged)]))
        assert reply.status == 401 and reply.code == "invalid_api_key"
    assert rig.gw.verifier.lookups == 0
    assert rig.up.seen == []


async def test_credentials_unknown_well_formed_key_looks_up_once(rig: Rig) -> None:
    # A real key id with a wrong secret: one store lookup, then the negative cache.
    real_id = (await rig.key()).split("_")[1]
    unknown = secret(keyformat.generate("kg", real_id)[0])
    for _ in range(5):
        reply = await rig.exchange(http("GET", "/u", [bearer(unknown)]))
        assert reply.status == 401 and reply.code == "invalid_api_key"
    assert rig.gw.verifier.lookups == 1
    assert rig.up.seen == []


async def test_credentials_revoked_key_is_401_and_never_forwarded(rig: Rig) -> None:
    token = await rig.key()
    assert (await rig.exchange(http("GET", "/r", [bearer(token)]))).status == 200
    key_id = token.split("_")[1]
    await rig.kg.services.keys.revoke(await rig.kg.admin_actor(), key_id)
    reply = await rig.exchange(http("GET", "/r", [bearer(token)]))
    assert reply.status == 401 and reply.code == "invalid_api_key"
    assert len(rig.up.seen) == 1


async def test_credentials_public_route_does_not_leak_presented_key_upstream(
    rig_factory: RigFactory, recorder: object
) -> None:
    from tests.support.upstreams import Recorder

    assert isinstance(recorder, Recorder)
    routes = (Route(name="open", prefix="/", upstream=recorder.url, public=True),)
    rig = await rig_factory(routes=routes)
    token = await rig.key()
    headers = [bearer(token), ("X-API-Key", token)]
    reply = await rig.exchange(http("GET", "/public", headers))
    assert reply.status == 200
    seen = rig.up.last()
    assert token not in repr(seen.headers)
    assert seen.values("X-Keygate-User") == []


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
async def test_credentials_public_route_strips_an_imported_key_too(
    rig_factory: RigFactory, recorder: object, fast_path: bool
) -> None:
    """An imported key is a keygate credential (docs/reference.md#imported-keys): a
    public route's upstream never receives it either; other values still pass."""
    from tests.support.upstreams import Recorder

    assert isinstance(recorder, Recorder)
    routes = (Route(name="open", prefix="/", upstream=recorder.url, public=True),)
    rig = await rig_factory(
        routes=routes, server={"fast_path": fast_path}, **_ALL_SOURCES
    )
    legacy = secret("legacy-partner-key-7f3a")
    found = read(f'{{"key": "{legacy}", "name": "partner"}}\n'.encode(), "json")
    report = await rig.kg.services.imports.run(
        rig.kg.actor(), found.entries, defaults=Defaults(owner="admin", groups=("default",))
    )
    assert report.imported == 1
    await wait_for(
        lambda: keyformat.digest(legacy) in rig.gw.verifier.imported,
        within=5,
        what="the imported digest in memory",
    )
    for header in [
        ("Authorization", f"Bearer {legacy}"),
        ("Authorization", f"bearer  {legacy} "),
        ("X-API-Key", legacy),
        ("X-API-Key", f" {legacy}"),
    ]:
        reply = await rig.exchange(http("GET", "/page", [header]))
        assert reply.status == 200
        seen = rig.up.last()
        assert legacy not in repr(seen.headers), header
        assert seen.values(header[0]) == []
    reply = await rig.exchange(http("GET", f"/page?api_key={legacy}&x=1", []))
    assert reply.status == 200
    assert rig.up.last().target == "/page?x=1"
    # Not an imported key: the upstream's own credentials pass untouched.
    other = [("Authorization", "Bearer upstream-own-token-0001"), ("X-API-Key", "upstream-1")]
    assert (await rig.exchange(http("GET", "/page", other))).status == 200
    assert rig.up.last().values("Authorization") == ["Bearer upstream-own-token-0001"]
    assert rig.up.last().values("X-API-Key") == ["upstream-1"]


_ALL_SOURCES = {"sources": ("authorization", "x-api-key", "query:api_key")}


# --- a token never travels upstream, whatever scheme wraps it (second review) -----------
@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
@pytest.mark.parametrize(
    "wrap",
    [
        "{t}",
        "Token {t}",
        "Digest {t}",
        "Bearer\t{t}",
        "Basic {basic}",
        "Basic {basic_key_id}",
        "Bearer  {t}",
    ],
    ids=["bare", "token", "digest", "bearer-tab", "basic", "basic-key-id", "bearer-two-spaces"],
)
async def test_credentials_another_token_in_authorization_never_reaches_the_upstream(
    rig_factory: RigFactory, fast_path: bool, wrap: str
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path})
    mine, other = await rig.key(), await rig.key()
    key_id, rest = other.split("_", 2)[1:]
    value = wrap.format(
        t=other,
        basic=base64.b64encode(f"x:{other}".encode()).decode(),
        basic_key_id=base64.b64encode(f"{key_id}:{rest}".encode()).decode(),
    )
    reply = await rig.exchange(
        http("GET", "/x", [("X-API-Key", mine), ("Authorization", value)])
    )
    assert reply.status in (200, 400)  # "Bearer  {t}" is a second credential: 400 ambiguous
    for seen in rig.up.seen:
        assert other not in str(seen.headers) and rest not in str(seen.headers)


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
async def test_credentials_a_token_in_a_header_that_is_no_source_is_dropped(
    rig_factory: RigFactory, fast_path: bool
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path}, sources=("authorization",))
    token = await rig.key()
    reply = await rig.exchange(http("GET", "/x", [bearer(token), ("X-API-Key", token)]))
    assert reply.status == 200
    assert rig.up.last().values("X-API-Key") == []


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
@pytest.mark.parametrize(
    ("where", "template"),
    [
        ("Cookie", "session=1; kgtoken={t}"),
        ("X-Auth-Token", "{t}"),
        ("Api-Key", "{t}"),
        ("X-Forwarded-Authorization", "Bearer {t}"),
        ("X-Original-Authorization", "Bearer {t}"),
        ("Token", "{t}"),
    ],
)
async def test_credentials_a_token_in_any_header_never_reaches_the_upstream(
    rig_factory: RigFactory, fast_path: bool, where: str, template: str
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path})
    mine, other = await rig.key(), await rig.key()
    reply = await rig.exchange(
        http("GET", "/x", [("X-API-Key", mine), (where, template.format(t=other))])
    )
    assert reply.status == 200
    assert other not in str(rig.up.last().headers)


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
async def test_credentials_a_token_in_the_query_never_reaches_the_upstream(
    rig_factory: RigFactory, fast_path: bool
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path})
    mine, other = await rig.key(), await rig.key()
    reply = await rig.exchange(
        http("GET", f"/x?a=1&api_key={other}&b=2", [("X-API-Key", mine)])
    )
    assert reply.status == 200
    seen = rig.up.last()
    assert seen.query == "a=1&b=2"
