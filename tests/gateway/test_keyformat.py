"""Token format: test vector, checksum, display form, hostile strings.

The contract is docs/reference.md#token-format.
"""

from __future__ import annotations

import contextlib
import hashlib
import string
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.config.settings import Route
from keygate.gateway.auth import keyformat
from keygate.gateway.auth.keyformat import BASE62, KEY_ID_ALPHABET, TokenFormatError
from tests.support.gateway import GatewayFactory

VECTOR = "kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNT"
PRINTABLE = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]

key_ids = st.text(alphabet=KEY_ID_ALPHABET, min_size=12, max_size=12)
secrets_ = st.text(alphabet=BASE62, min_size=32, max_size=32)
prefixes = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=16)
tokens = st.builds(keyformat.make_token, prefixes, key_ids, secrets_)


def _base62_value(text: str) -> int:
    value = 0
    for char in text:
        value = value * 62 + BASE62.index(char)
    return value


def test_keyformat_spec_vector_parses() -> None:
    parsed = keyformat.parse(VECTOR, "kg")
    assert parsed.prefix == "kg"
    assert parsed.key_id == "0123456789ab"
    assert parsed.secret == "abcdefghijklmnopqrstuvwxyzABCDEF"
    assert parsed.checksum == "2dJnNT"


def test_keyformat_spec_vector_checksum_is_base62_crc32() -> None:
    body = VECTOR[:-6]
    assert keyformat.checksum(body) == "2dJnNT"
    assert _base62_value("2dJnNT") == zlib.crc32(body.encode()) & 0xFFFFFFFF


def test_keyformat_spec_vector_under_other_prefix_is_refused() -> None:
    with pytest.raises(TokenFormatError):
        keyformat.parse(VECTOR, "kx")


def test_keyformat_alphabet_digits_then_upper_then_lower() -> None:
    assert string.digits + string.ascii_uppercase + string.ascii_lowercase == BASE62
    assert keyformat.base62(10, 1) == "A"
    assert keyformat.base62(36, 1) == "a"
    assert keyformat.base62(61, 1) == "z"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "000000"), (1, "000001"), (62, "000010"), (2**32 - 1, "4gfFC3")],
)
def test_keyformat_checksum_left_padded_to_six(value: int, expected: str) -> None:
    assert keyformat.base62(value, 6) == expected
    assert _base62_value(expected) == value


def test_keyformat_small_crc_checksum_keeps_leading_zeros() -> None:
    # About one body in five has a CRC below 62**5: its checksum starts with "0".
    body = next(
        b for i in range(10_000) if zlib.crc32((b := f"kg_0123456789ab_{i:032d}").encode()) < 62**5
    )
    check = keyformat.checksum(body)
    assert len(check) == 6
    assert check[0] == "0"
    assert _base62_value(check) == zlib.crc32(body.encode())
    keyformat.parse(body + check, "kg")


def test_keyformat_generate_makes_parseable_unique_tokens() -> None:
    seen = set()
    for _ in range(200):
        token, key_id = keyformat.generate("kg")
        parsed = keyformat.parse(token, "kg")
        assert parsed.key_id == key_id
        assert len(parsed.secret) == 32
        seen.add(token)
    assert len(seen) == 200


def test_keyformat_generate_roll_keeps_key_id() -> None:
    token, key_id = keyformat.generate("kg", "0123456789ab")
    assert key_id == "0123456789ab"
    assert keyformat.parse(token, "kg").key_id == "0123456789ab"


@given(tokens)
def test_keyformat_any_generated_token_parses(token: str) -> None:
    prefix = token.split("_", 1)[0]
    parsed = keyformat.parse(token, prefix)
    assert keyformat.make_token(prefix, parsed.key_id, parsed.secret) == token


@given(tokens, st.data())
def test_keyformat_single_substitution_fails(token: str, data: st.DataObject) -> None:
    prefix = token.split("_", 1)[0]
    pos = data.draw(st.integers(0, len(token) - 1), label="position")
    char = data.draw(st.sampled_from([c for c in PRINTABLE if c != token[pos]]), label="char")
    with pytest.raises(TokenFormatError):
        keyformat.parse(token[:pos] + char + token[pos + 1 :], prefix)


@given(tokens, st.data())
def test_keyformat_single_deletion_fails(token: str, data: st.DataObject) -> None:
    prefix = token.split("_", 1)[0]
    pos = data.draw(st.integers(0, len(token) - 1), label="position")
    with pytest.raises(TokenFormatError):
        keyformat.parse(token[:pos] + token[pos + 1 :], prefix)


@given(tokens, st.data())
def test_keyformat_single_insertion_fails(token: str, data: st.DataObject) -> None:
    prefix = token.split("_", 1)[0]
    pos = data.draw(st.integers(0, len(token)), label="position")
    char = data.draw(st.sampled_from(PRINTABLE), label="char")
    with pytest.raises(TokenFormatError):
        keyformat.parse(token[:pos] + char + token[pos:], prefix)


@given(tokens, st.data())
def test_keyformat_adjacent_transposition_fails(token: str, data: st.DataObject) -> None:
    prefix = token.split("_", 1)[0]
    pos = data.draw(st.integers(0, len(token) - 2), label="position")
    swapped = token[:pos] + token[pos + 1] + token[pos] + token[pos + 2 :]
    if swapped != token:
        with pytest.raises(TokenFormatError):
            keyformat.parse(swapped, prefix)


@given(st.text())
def test_keyformat_arbitrary_text_raises_only_format_error(text: str) -> None:
    with contextlib.suppress(TokenFormatError):
        keyformat.parse(text, "kg")


# Strings of exactly the right length and shape reach every check in turn.
_shaped = st.builds(
    lambda kid, tail: f"kg_{kid}_{tail}",
    st.text(min_size=12, max_size=12),
    st.text(min_size=38, max_size=38),
)


@given(_shaped)
def test_keyformat_shaped_text_raises_only_format_error(text: str) -> None:
    with contextlib.suppress(TokenFormatError):
        keyformat.parse(text, "kg")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "kg",
        "kg_",
        VECTOR.upper(),
        VECTOR + "\n",
        " " + VECTOR[1:],
        VECTOR.replace("_", "-"),
        "kg_0123456789AB_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNT",
        "kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDE\u00e92dJnNT",
        "kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnN\x00",
    ],
)
def test_keyformat_malformed_is_refused(text: str) -> None:
    with pytest.raises(TokenFormatError) as info:
        keyformat.parse(text, "kg")
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.message == "The API key is not valid."


def test_keyformat_digest_is_sha256_of_whole_token() -> None:
    assert keyformat.digest(VECTOR) == hashlib.sha256(VECTOR.encode()).digest()


def test_keyformat_display_shows_id_and_last_four() -> None:
    assert keyformat.display("kg", "0123456789ab", "JnNT") == "kg_0123456789ab_…JnNT"


async def test_keyformat_issued_key_display_matches_token(
    keygate_factory: GatewayFactory,
) -> None:
    kg = await keygate_factory((Route(name="default", prefix="/", upstream="http://127.0.0.1:9"),))
    issued = await kg.services.keys.create(await kg.admin_actor(), {"groups": ["default"]})
    key_id = issued.key.id
    assert issued.key.display == f"kg_{key_id}_…{issued.token[-4:]}"
    assert issued.key.as_json()["display"] == issued.key.display
    assert issued.token not in str(issued.key.as_json())


def test_new_key_id_twelve_base36_characters() -> None:
    ids = {keyformat.new_key_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 12 and set(i) <= set(keyformat.KEY_ID_ALPHABET) for i in ids)
    # Every position takes every character (one draw, written in base 36).
    assert {i[0] for i in ids} == {i[11] for i in ids} == set(keyformat.KEY_ID_ALPHABET)


@pytest.mark.parametrize(
    ("token", "shown"),
    [
        ("abcdefghijklmnop", ("", "mnop")),  # short: the last 4 only
        ("a" * 27 + "bcdef", ("aaaa", "cdef")),  # 32 characters: the first 4 too
        ("x" * 30 + "y", ("", "xxxy")),  # 31: not yet
    ],
)
def test_imported_display_shows_first_4_only_from_32_characters(
    token: str, shown: tuple[str, str]
) -> None:
    assert keyformat.imported_display(token) == shown
