"""Finding the credential (docs/reference.md#presenting-a-key) — pure, table-driven."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.gateway.auth.credentials import (
    Sources,
    find_credential,
    query_values,
    strip_query_param,
)
from keygate.gateway.errors import AmbiguousApiKey, Unauthorized

TOKEN = "kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNT"
OTHER = "kg_zzzzzzzzzzzz_abcdefghijklmnopqrstuvwxyzABCDEF000000"
DEFAULT = Sources.parse(("authorization", "x-api-key"))
ALL = Sources.parse(("authorization", "x-api-key", "basic", "query:api_key"))


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


TOKEN_BASIC = basic("0123456789ab", "abcdefghijklmnopqrstuvwxyzABCDEF2dJnNT")


def test_credentials_sources_setting_parses_to_flags() -> None:
    assert Sources(bearer=True, x_api_key=True, basic=False, query=None) == DEFAULT
    assert Sources(bearer=True, x_api_key=True, basic=True, query="api_key") == ALL


@pytest.mark.parametrize(
    ("sources", "pairs", "query", "drop_headers", "drop_query"),
    [
        (DEFAULT, [("Authorization", f"Bearer {TOKEN}")], "", ("Authorization",), None),
        (DEFAULT, [("authorization", f"bearer   {TOKEN}  ")], "", ("Authorization",), None),
        (DEFAULT, [("X-API-Key", TOKEN)], "", ("X-API-Key",), None),
        (DEFAULT, [("x-api-key", f" {TOKEN} ")], "", ("X-API-Key",), None),
        (DEFAULT, [("X-API-Key", TOKEN), ("X-API-Key", TOKEN)], "", ("X-API-Key",), None),
        (
            DEFAULT,
            [("Authorization", f"Bearer {TOKEN}"), ("X-API-Key", TOKEN)],
            "",
            ("Authorization", "X-API-Key"),
            None,
        ),
        (DEFAULT, [("X-API-Key", TOKEN), ("Authorization", basic("u", "p"))], "",
         ("X-API-Key",), None),
        (ALL, [("Authorization", TOKEN_BASIC)], "", ("Authorization",), None),
        (ALL, [], f"api_key={TOKEN}", (), "api_key"),
        (ALL, [], f"a=1&api_key={TOKEN}&b=2", (), "api_key"),
        (ALL, [("X-API-Key", TOKEN)], f"api_key={TOKEN}", ("X-API-Key",), "api_key"),
    ],
)  # fmt: skip
def test_credentials_one_token_is_found_with_what_to_drop(
    sources: Sources,
    pairs: list[tuple[str, str]],
    query: str,
    drop_headers: tuple[str, ...],
    drop_query: str | None,
) -> None:
    credential = find_credential(headers(*pairs), query, sources, "kg")
    assert credential.token == TOKEN
    assert {h.lower() for h in credential.drop_headers} == {h.lower() for h in drop_headers}
    assert credential.drop_query == drop_query


@pytest.mark.parametrize(
    ("sources", "pairs", "query"),
    [
        (DEFAULT, [], ""),
        (DEFAULT, [("Authorization", "Bearer")], ""),
        (DEFAULT, [("Authorization", "Bearer    ")], ""),
        (DEFAULT, [("X-API-Key", "")], ""),
        (DEFAULT, [("Authorization", basic("0123456789ab", "x"))], ""),  # basic not a source
        (DEFAULT, [("Authorization", f"Token {TOKEN}")], ""),
        (DEFAULT, [], f"api_key={TOKEN}"),  # query not a source
        (Sources.parse(("x-api-key",)), [("Authorization", f"Bearer {TOKEN}")], ""),
        (Sources.parse(("authorization",)), [("X-API-Key", TOKEN)], ""),
        (ALL, [], "api_key="),
        (ALL, [], "api_keyx=1&xapi_key=2"),
    ],
)
def test_credentials_none_is_401_missing(
    sources: Sources, pairs: list[tuple[str, str]], query: str
) -> None:
    with pytest.raises(Unauthorized) as info:
        find_credential(headers(*pairs), query, sources, "kg")
    assert info.value.code == "missing_api_key"
    assert info.value.headers == {"WWW-Authenticate": 'Bearer realm="keygate"'}


@pytest.mark.parametrize(
    ("sources", "pairs", "query"),
    [
        (DEFAULT, [("Authorization", f"Bearer {TOKEN}"), ("X-API-Key", OTHER)], ""),
        (DEFAULT, [("X-API-Key", TOKEN), ("X-API-Key", OTHER)], ""),
        (DEFAULT, [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {OTHER}")],
         ""),
        (DEFAULT, [("X-API-Key", TOKEN), ("X-API-Key", "garbage")], ""),
        (ALL, [("X-API-Key", TOKEN)], f"api_key={OTHER}"),
        (ALL, [], f"api_key={TOKEN}&api_key={OTHER}"),
        (ALL, [("Authorization", TOKEN_BASIC), ("X-API-Key", OTHER)], ""),
    ],
)  # fmt: skip
def test_credentials_two_different_is_400_ambiguous(
    sources: Sources, pairs: list[tuple[str, str]], query: str
) -> None:
    with pytest.raises(AmbiguousApiKey) as info:
        find_credential(headers(*pairs), query, sources, "kg")
    assert info.value.status == 400
    assert info.value.code == "ambiguous_api_key"
    assert TOKEN not in info.value.message
    assert OTHER not in info.value.message


def test_credentials_basic_for_upstream_is_not_dropped() -> None:
    upstream_basic = basic("svc", "pw")
    found = find_credential(
        headers(("Authorization", upstream_basic), ("X-API-Key", TOKEN)), "", DEFAULT, "kg"
    )
    assert found.drop_headers == ("X-API-Key",)


@pytest.mark.parametrize("value", ["Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()])
def test_credentials_malformed_basic_never_parses_as_a_token(value: str) -> None:
    found = find_credential(headers(("Authorization", value)), "", ALL, "kg")
    assert not found.token.startswith("kg_")


def test_credentials_query_value_is_url_decoded() -> None:
    assert query_values("a=1&api_key=kg%5Fx&api_key=y+z", "api_key") == ["kg_x", "y z"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("api_key=t", ""),
        ("a=1&api_key=t", "a=1"),
        ("api_key=t&a=1", "a=1"),
        ("a=%2f&api_key=t&b=%7E+x&c", "a=%2f&b=%7E+x&c"),
        ("a=1&&api_key=t", "a=1&"),
        ("api%5Fkey=t&a=1", "a=1"),
        ("api_keyx=1&api_key=t", "api_keyx=1"),
        ("a=1", "a=1"),
    ],
)
def test_credentials_strip_query_param_keeps_other_bytes(raw: str, expected: str) -> None:
    assert strip_query_param(raw, "api_key") == expected


@given(st.lists(st.text(alphabet="abc=%&+2fF_x", max_size=8), max_size=6))
def test_credentials_strip_query_param_keeps_other_pairs_in_order(parts: list[str]) -> None:
    raw = "&".join(parts)
    stripped = strip_query_param(raw, "api_key")
    assert "api_key" not in query_values(stripped, "api_key")
    kept = [p for p in raw.split("&") if p.partition("=")[0] != "api_key"]
    assert stripped.split("&") == kept or (stripped == "" and kept in ([], [""]))
