"""Secrets (OWASP API2, API8): no token in any log line, none in plain text in the store.

Every test of this suite is already checked by the autouse ``no_secret_in_logs``
fixture (conftest): these tests drive the paths most likely to leak and check
that the capture really sees the gateway's lines.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from keygate.config.loader import sqlite_path
from keygate.config.settings import Route
from keygate.gateway.auth import keyformat
from tests.support.gateway import Rig, RigFactory
from tests.support.polling import wait_for
from tests.support.raw import bearer, http
from tests.support.secrets import TOKEN_SHAPE, LineCapture, leaks, secret
from tests.support.upstreams import Recorder


async def test_secrets_capture_sees_gateway_and_aiohttp_lines(
    rig: Rig, token: str, log_capture: LineCapture
) -> None:
    start = len(log_capture.lines)
    assert (await rig.exchange(http("GET", "/seen?x=1", [bearer(token)]))).status == 200
    await rig.exchange(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    lines = log_capture.lines[start:]
    assert any(line.startswith("aiohttp.access") and "path=/seen" in line for line in lines)
    assert any(line.startswith("keygate.protocol") for line in lines)
    # The access line never carries the query string, with or without a key in it.
    assert not any("x=1" in line for line in lines if line.startswith("aiohttp.access"))


def test_secrets_leak_detector_catches_tokens() -> None:
    token = keyformat.generate("kg")[0]
    assert TOKEN_SHAPE.search(f"GET /x?api_key={token} HTTP/1.1")
    assert leaks([f"Authorization: Bearer {token}"])
    assert not leaks(["method=GET path=/x status=401 key_id=0123456789ab"])


async def test_secrets_every_presentation_path_logs_no_key(
    rig_factory: RigFactory, recorder: Recorder
) -> None:
    routes = (
        Route(name="down", prefix="/down", upstream="http://127.0.0.1:9"),
        Route(name="default", prefix="/", upstream=recorder.url),
    )
    rig = await rig_factory(routes=routes, sources=("authorization", "x-api-key", "basic",
                                                    "query:api_key"))
    token = await rig.key()
    other = await rig.key()
    key_id, tail = token.split("_")[1], token.split("_")[2]
    basic = secret(base64.b64encode(f"{key_id}:{tail}".encode()).decode())
    bad = secret(token[:-1] + ("A" if token[-1] != "A" else "B"))
    requests = [
        http("GET", "/ok", [bearer(token)]),
        http("GET", f"/q?api_key={token}&x=1", []),
        http("GET", f"/q?api_key={bad}", []),
        http("GET", "/b", [("Authorization", f"Basic {basic}")]),
        http("GET", "/amb", [bearer(token), ("X-API-Key", other)]),
        http("GET", "/bad", [bearer(bad)]),
        http("GET", "/down/x", [bearer(token)]),
        http("GET", "/big", [("X-API-Key", token + "x" * 20000)]),
        http("GET", "/many", [("X-API-Key", token)] * 150),
        http("POST", "/body", [bearer(token), ("Content-Length", "3")], token.encode()[:3]),
        http("GET", "/folded", [("X-API-Key", token), ("X-Fold", "a\r\n " + token)]),
        http("GET", "/_keygate/api/v1/me", [bearer(token)]),
        http("GET", f"/_keygate/api/v1/me?api_key={token}", []),
        b"GET /nul HTTP/1.1\r\nX-API-Key: " + token.encode() + b"\x00\r\n\r\n",
    ]
    for request in requests:
        await rig.exchange(request)


async def test_secrets_admin_issue_and_roll_log_no_token(rig: Rig) -> None:
    body = b'{"groups": ["default"], "name": "ci"}'
    headers = [bearer(rig.kg.admin_token), ("Content-Type", "application/json"),
               ("Content-Length", str(len(body)))]
    created = await rig.exchange(http("POST", "/_keygate/api/v1/keys", headers, body))
    assert created.status == 201
    token = secret(created.json()["token"])
    key_id = created.json()["key"]["id"]
    roll_headers = [bearer(rig.kg.admin_token), ("Content-Length", "2"),
                    ("Content-Type", "application/json")]
    rolled = await rig.exchange(
        http("POST", f"/_keygate/api/v1/keys/{key_id}/roll", roll_headers, b"{}")
    )
    assert rolled.status == 200
    secret(rolled.json()["token"])
    assert token not in rolled.body.decode()


def _store_bytes(path: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        file = Path(str(path) + suffix)
        if file.exists():
            data += file.read_bytes()
    return data


async def test_secrets_store_never_holds_a_token_in_plain_text(rig: Rig) -> None:
    tokens = [await rig.key() for _ in range(3)]
    actor = await rig.kg.admin_actor()
    rolled = await rig.kg.services.keys.roll(actor, tokens[0].split("_")[1], {"grace_seconds": 60})
    tokens.append(secret(rolled.token))
    for token in tokens:
        assert (await rig.exchange(http("GET", "/use", [bearer(token)]))).status == 200
    me = await rig.exchange(http("GET", "/_keygate/api/v1/me", [bearer(rig.kg.admin_token)]))
    assert me.status == 200
    tokens.append(rig.kg.admin_token)
    # Let the last-used batch reach the store, then look at every byte of it.
    await wait_for(lambda: rig.gw.usage.pending == 0, what="last-used flushed")
    await asyncio.sleep(0)
    data = _store_bytes(Path(sqlite_path(rig.settings.store.url)))
    assert data, "no store file found"
    for token in tokens:
        tail = token.split("_")[2]
        for needle in (token, tail, tail[:32], token.encode().hex()):
            assert needle.encode() not in data, "a token is stored in plain text"
        # Base64 of the secret would be as bad.
        assert base64.b64encode(tail.encode()) not in data
    assert not TOKEN_SHAPE.search(data.decode("latin-1"))


@pytest.mark.parametrize("where", ["header", "query"])
async def test_secrets_error_bodies_never_echo_the_key(
    rig_factory: RigFactory, where: str
) -> None:
    rig = await rig_factory(sources=("x-api-key", "query:api_key"))
    bad = secret("kg_" + "z" * 12 + "_" + "Q" * 38)
    request = (
        http("GET", "/e", [("X-API-Key", bad)]) if where == "header"
        else http("GET", f"/e?api_key={bad}", [])
    )
    reply = await rig.exchange(request)
    assert reply.status == 401
    assert bad.encode() not in reply.body
    assert all(bad not in v for _, v in reply.headers)
