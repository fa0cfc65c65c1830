"""Request bodies: JSON only, 64 KiB cap however framed, objects only."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import orjson
import pytest

from keygate.admin.body import MAX_BODY_BYTES
from keygate.gateway.service.validation import too_deep
from tests.support.admin import API, AdminApi
from tests.support.gateway import Keygate
from tests.support.raw import fetch, http


def padded_key_body(size: int) -> bytes:
    """A valid key-create body of exactly ``size`` bytes."""
    base = orjson.dumps({"groups": ["default"], "description": ""})
    pad = size - len(base)
    return orjson.dumps({"groups": ["default"], "description": "x" * pad})


async def test_create_body_over_64k_with_content_length_is_413(api: AdminApi) -> None:
    body = padded_key_body(MAX_BODY_BYTES + 1)
    reply = await api.call(
        "POST", "/keys", api.admin, headers={"Content-Type": "application/json"}, data=body
    )
    assert reply.status == 413
    assert reply.code == "too_large"


async def test_create_body_over_64k_chunked_is_413(api: AdminApi) -> None:
    body = padded_key_body(MAX_BODY_BYTES + 4096)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    reply = await api.call(
        "POST", "/keys", api.admin, headers={"Content-Type": "application/json"}, data=chunks()
    )
    assert reply.status == 413
    assert reply.code == "too_large"


async def test_chunked_body_over_64k_raw_socket_is_413(keygate: Keygate) -> None:
    chunk = b"x" * 8192
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    headers = [
        ("Authorization", f"Bearer {keygate.admin_token}"),
        ("Content-Type", "application/json"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
    ]
    reply = await fetch(keygate.port, http("POST", f"{API}/keys", headers, framed, host="t"))
    assert reply.status == 413
    assert b'"too_large"' in reply.body


async def test_gzip_bomb_is_capped_after_decoding_413(api: AdminApi) -> None:
    body = gzip.compress(padded_key_body(MAX_BODY_BYTES * 16))
    assert len(body) < MAX_BODY_BYTES
    reply = await api.call(
        "POST",
        "/keys",
        api.admin,
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert reply.status == 413


async def test_create_body_of_exactly_64k_is_accepted(api: AdminApi) -> None:
    # The description limit (1000) makes it 422, but the size is not refused.
    reply = await api.call(
        "POST",
        "/keys",
        api.admin,
        headers={"Content-Type": "application/json"},
        data=padded_key_body(MAX_BODY_BYTES),
    )
    assert reply.status == 422
    assert "description" in reply.details


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b"{'a': 1}",
        b'{"a": NaN}',
        b"\xff\xfe",
        b'"\\ud800"',
        b'{"groups": ["default"]} trailing',
    ],
)
async def test_create_body_not_json_is_400(api: AdminApi, raw: bytes) -> None:
    reply = await api.call(
        "POST", "/keys", api.admin, headers={"Content-Type": "application/json"}, data=raw
    )
    assert reply.status == 400
    assert reply.code == "bad_request"


@pytest.mark.parametrize("value", [[], [{"groups": ["default"]}], "x", 1, None, True])
async def test_create_body_json_not_object_is_400(api: AdminApi, value: object) -> None:
    reply = await api.post("/keys", api.admin, value)
    assert reply.status == 400
    assert reply.code == "bad_request"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_create_body_wrong_content_type_is_400(api: AdminApi, content_type: str) -> None:
    reply = await api.call(
        "POST",
        "/keys",
        api.admin,
        headers={"Content-Type": content_type},
        data=orjson.dumps({"groups": ["default"]}),
    )
    assert reply.status == 400
    assert reply.code == "bad_request"


async def test_create_body_without_content_type_is_400(keygate: Keygate) -> None:
    body = b'{"groups": ["default"]}'
    headers = [
        ("Authorization", f"Bearer {keygate.admin_token}"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    reply = await fetch(keygate.port, http("POST", f"{API}/keys", headers, body, host="t"))
    assert reply.status == 400
    assert b'"bad_request"' in reply.body


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/merge-patch+json"]
)
async def test_create_body_json_content_types_are_accepted(
    api: AdminApi, content_type: str
) -> None:
    reply = await api.call(
        "POST",
        "/keys",
        api.admin,
        headers={"Content-Type": content_type},
        data=orjson.dumps({"groups": ["default"]}),
    )
    assert reply.status == 201


async def test_create_without_body_is_400(api: AdminApi) -> None:
    reply = await api.call("POST", "/keys", api.admin)
    assert reply.status == 400


async def test_roll_without_body_is_allowed(api: AdminApi, plain_token: str) -> None:
    reply = await api.call("POST", f"/keys/{plain_token.split('_')[1]}/roll", api.admin)
    assert reply.status == 200


async def test_deeply_nested_body_is_400(api: AdminApi) -> None:
    deep = b'{"groups": ["default"], "metadata": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}"
    reply = await api.call(
        "POST", "/keys", api.admin, headers={"Content-Type": "application/json"}, data=deep
    )
    assert reply.status == 400
    assert reply.code == "bad_request"


@pytest.mark.parametrize(
    ("value", "limit", "deep"),
    [(1, 0, False), ([], 0, True), ([], 1, False), ([[[]]], 2, True), ({"a": {"b": 1}}, 2, False)],
)
def test_too_deep_counts_container_levels(value: object, limit: int, deep: bool) -> None:
    assert too_deep(value, limit) is deep


# Every endpoint that takes a JSON object body, the optional one (roll) included.
BODY_ENDPOINTS = [
    ("POST", "/keys"),
    ("PATCH", "/keys/{key}"),
    ("POST", "/keys/{key}/roll"),
    ("POST", "/users"),
    ("PATCH", "/users/admin"),
    ("POST", "/groups"),
    ("PATCH", "/groups/{group}"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize("raw", [b"null", b"[]", b'"x"', b"1", b"true"])
async def test_json_body_not_an_object_is_400_everywhere(
    api: AdminApi, plain_token: str, method: str, path: str, raw: bytes
) -> None:
    rule = {"route": "*", "methods": ["GET"], "paths": ["/**"]}
    assert (await api.post("/groups", api.admin, {"name": "g1", "rules": [rule]})).status == 201
    target = path.format(key=plain_token.split("_")[1], group="g1")
    before = (await api.get("/audit", api.admin)).json["items"]
    reply = await api.call(
        method, target, api.admin, headers={"Content-Type": "application/json"}, data=raw
    )
    assert reply.status == 400, reply.raw
    assert reply.code == "bad_request"
    assert (await api.get("/audit", api.admin)).json["items"] == before
    assert (await api.proxy(plain_token)).status == 200  # roll did not happen


async def test_roll_json_null_body_is_400_and_token_unchanged(
    api: AdminApi, plain_token: str
) -> None:
    kid = plain_token.split("_")[1]
    reply = await api.call(
        "POST", f"/keys/{kid}/roll", api.admin,
        headers={"Content-Type": "application/json"}, data=b"null",
    )
    assert reply.status == 400
    assert reply.code == "bad_request"
    assert "token" not in reply.raw.decode()
    assert (await api.proxy(plain_token)).status == 200


async def test_roll_empty_object_body_is_allowed(api: AdminApi, plain_token: str) -> None:
    reply = await api.post(f"/keys/{plain_token.split('_')[1]}/roll", api.admin, {})
    assert reply.status == 200
