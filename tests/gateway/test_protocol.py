"""Malformed requests are refused by our protocol as the JSON error, not aiohttp's text."""

from __future__ import annotations

import pytest

from tests.support.gateway import Keygate
from tests.support.raw import fetch


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
    reply = await fetch(keygate.port, payload)
    assert reply.status == status
    assert reply.code == code
