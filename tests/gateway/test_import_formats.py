# ruff: noqa: E501 - input tables read best one file per line
"""The import readers on real-shaped files (docs/reference.md#imported-keys):
what each format yields, with line numbers, and how a damaged file is named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keygate.gateway.service.imports import kong as kong_reader
from keygate.gateway.service.imports import read

DATA = Path(__file__).parent.parent / "data" / "imports"


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


# --- CSV --------------------------------------------------------------------------
def test_csv_spreadsheet_export_bom_quotes_crlf_blank_lines() -> None:
    found = read(data("clients.csv"), "csv")
    assert found.problems == []
    keys = [(e.line, e.key, e.name, e.groups, e.expires_at, e.description) for e in found.entries]
    assert keys == [
        (2, "sheet-key-0001-abcdef", "billing sync", "default", None, "Billing, EU region"),
        (4, "sheet-key-0002-abcdef", "reports", "default", "2099-12-31T23:59:59Z",
         "Reports\nsecond line"),
        (7, "sheet-key-0003-abcdef", "billing sync", None, None, None),
    ]  # fmt: skip


def test_csv_non_utf8_bytes_name_their_line() -> None:
    raw = b"key,name\nlatin1-key-0001-abcd,caf\xe9\nfine-key-0002-abcdef,ok\n"
    found = read(raw, "csv")
    assert [(p.line, p.reason) for p in found.problems] == [
        (2, "not UTF-8 text (byte 0xe9)")
    ]


def test_csv_truncated_inside_a_quote() -> None:
    raw = b'key,name\nkey-number-one-abcdef,a\n"key-number-two-abc'
    found = read(raw, "csv")
    assert [p.line for p in found.problems] == [3]
    assert "truncated" in found.problems[0].reason


def test_csv_truncated_row_has_fewer_fields() -> None:
    raw = b"key,name,owner,groups\nkey-number-one-abcdef,a,alice,default\nkey-number-two-abc"
    found = read(raw, "csv")
    assert [(p.line, p.reason) for p in found.problems] == [
        (3, "1 fields where the header has 4 (truncated?)")
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"", "the file holds no keys"), (b"\xef\xbb\xbfkey,name\r\n\r\n", "the file holds no keys"),
     (b"token,name\nabc,d\n", "the header names no 'key' column")],
)  # fmt: skip
def test_csv_empty_or_headless(raw: bytes, reason: str) -> None:
    assert [p.reason for p in read(raw, "csv").problems] == [reason]


# --- JSON -----------------------------------------------------------------------------
def test_json_lines_with_blank_lines() -> None:
    found = read(data("keys.jsonl"), "json")
    assert found.problems == []
    assert [(e.line, e.key, e.name, e.metadata) for e in found.entries] == [
        (1, "jsonl-key-0001-abcdef", "etl", {"team": "data"}),
        (3, "jsonl-key-0002-abcdef", None, {}),
    ]


def test_json_array_elements_carry_their_lines() -> None:
    raw = b'[\n  {"key": "array-key-0001-abcdef"},\n\n  {"key": "array-key-0002-abcdef",\n  "name": "b"}\n]\n'
    found = read(raw, "json")
    assert found.problems == []
    assert [(e.line, e.key) for e in found.entries] == [
        (2, "array-key-0001-abcdef"),
        (4, "array-key-0002-abcdef"),
    ]


def test_json_truncated_array_names_where_it_stops() -> None:
    raw = b'[\n  {"key": "array-key-0001-abcdef"},\n  {"key": "array-key-00'
    found = read(raw, "json")
    assert [p.line for p in found.problems] == [3]
    assert "truncated" in found.problems[0].reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"key": "x", "colour": "red"}\n', "unknown field 'colour'"),
        (b'"just-a-string"\n', "a key record must be a JSON object"),
        (b'{"key": "x", "metadata": [1]}\n', "metadata must be a JSON object"),
        (b'{"key": "json-lines-key-1", \n', "not valid JSON (Expecting property name enclosed in double quotes)"),
    ],
)  # fmt: skip
def test_json_lines_bad_records(raw: bytes, reason: str) -> None:
    assert [(p.line, p.reason) for p in read(raw, "json").problems] == [(1, reason)]


# --- Kong -------------------------------------------------------------------------------
def test_kong_key_auths_page_with_pagination_fields() -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    found = kong_reader.read(data("key-auths.json"), now)
    assert found.problems == []
    entries = found.entries
    assert [(e.line, e.key, e.name) for e in entries] == [
        (7, "bcbfb45d-e391-42bf-c2e5-94e98dd8cb7d", "6d1a5d4e-2f6b-4d3b-9a0e-5b8d1c0f7a11"),
        (15, "Kp9vX2mQ7rT4wY8zA1bC3dE5fG6hJ0kL", "mobile-app"),
        (23, "mobile-app-secondary-key-0001", "mobile-app"),
    ]
    assert entries[0].metadata == {
        "kong": {
            "id": "b1d87b08-7eb6-4320-8069-efd85a4a8d89",
            "consumer": {"id": "6d1a5d4e-2f6b-4d3b-9a0e-5b8d1c0f7a11"},
            "tags": ["billing", "legacy"],
        }
    }
    assert entries[1].expires_at == now + timedelta(days=1)
    assert entries[0].expires_at is None and entries[2].expires_at is None


def test_kong_pages_saved_in_an_array() -> None:
    page = data("key-auths.json").decode()
    found = read(f"[{page}, {page}]".encode(), "kong")
    assert len(found.entries) == 6  # duplicates are the import's to refuse


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"data": [{"key": "abc"', "not valid JSON (truncated?)"),
        (b'{"total": 3}', "not a Kong key-auth listing (an object with a 'data' list)"),
        (b'{"data": []}', "the file holds no keys"),
        (b'{"data": [{"key": "kong-key-0001-abcdef", "ttl": "soon"}]}',
         "ttl must be a number of seconds or null"),
    ],
)  # fmt: skip
def test_kong_damaged(raw: bytes, reason: str) -> None:
    assert [p.reason for p in read(raw, "kong").problems] == [reason]


# --- nginx map ----------------------------------------------------------------------------
def test_nginx_map_comments_quotes_default() -> None:
    found = read(data("api_keys.map"), "nginx-map")
    assert found.problems == []
    assert [(e.line, e.key, e.name) for e in found.entries] == [
        (5, "9f2c7e1a4b8d3f6a0c5e", "partner-acme"),
        (6, "legacy;key#with:punct!1", "legacy-semicolon"),
        (7, "4d9e8b7a6c5f4e3d2c1b", "reporting"),
        (8, "quoted-name-key-0001", "reporting backup"),
        (9, "default-looking-key-0002", "odd-one"),
    ]


def test_nginx_map_entries_alone_as_an_included_file() -> None:
    raw = b'# included by the map block\n"included-key-0001-ab" one;\nincluded-key-0002-ab two;\n'
    found = read(raw, "nginx-map")
    assert [(e.line, e.key, e.name) for e in found.entries] == [
        (2, "included-key-0001-ab", "one"),
        (3, "included-key-0002-ab", "two"),
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'map $http_x_api_key $c {\n "k1-0000000000000000" a;\n', (1, "the map block is not closed (truncated?)")),
        (b'map $http_x_api_key $c {\n "k1-00000000000000\n', (2, "a quote is not closed (truncated?)")),
        (b'map $http_x_api_key $c {\n ~^abc.*$ a;\n}\n', (2, "a regular expression, not a key")),
        (b'map $http_x_api_key $c {\n include keys.conf;\n}\n', (2, "include is not followed: import the included file itself")),
        (b'map $http_x_api_key $c {\n k1-000000000000000 a b;\n}\n', (2, "an entry must be: key name;")),
    ],
)  # fmt: skip
def test_nginx_map_damaged(raw: bytes, problem: tuple[int, str]) -> None:
    assert [(p.line, p.reason) for p in read(raw, "nginx-map").problems] == [problem]
