"""Malformed requests are refused by our protocol as SPEC JSON, not aiohttp's text."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import Keygate


async def raw_exchange(kg: Keygate, payload: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", kg.client.port)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n", 431,
         "headers_too_large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431,
         "headers_too_large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400,
         "bad_request"),
        (b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ],
)
async def test_protocol_malformed_request_is_json_error(
    keygate: Keygate, payload: bytes, status: int, code: str
) -> None:
    got_status, body = await raw_exchange(keygate, payload)
    assert got_status == status
    assert json.loads(body)["error"]["code"] == code
