"""The proxy end to end: every proxy status, and what the upstream received.

The contract is docs/reference.md#status-codes-and-errors.
"""

from __future__ import annotations

import pytest

from tests.support.gateway import Keygate
from tests.support.upstreams import header_values


async def test_proxy_valid_key_forwards_with_identity(keygate: Keygate) -> None:
    token = await keygate.make_key(["default"], name="ci")
    resp = await keygate.client.get("/a/b?x=1", headers=keygate.bearer(token))
    assert resp.status == 200
    echoed = await resp.json()
    assert echoed["path"] == "/a/b"
    assert echoed["query"] == "x=1"
    assert header_values(echoed, "Authorization") == []
    assert header_values(echoed, "X-Keygate-Key-Name") == ["ci"]
    assert header_values(echoed, "X-Keygate-User") == ["admin"]
    assert header_values(echoed, "X-Keygate-Groups") == ["default"]
    assert resp.headers["X-Request-Id"]


async def test_proxy_missing_key_is_401_missing(keygate: Keygate) -> None:
    resp = await keygate.client.get("/a")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="keygate"'
    assert (await resp.json())["error"]["code"] == "missing_api_key"


BAD_CHECKSUM = "kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNU"


@pytest.mark.parametrize("token", ["nope", BAD_CHECKSUM])
async def test_proxy_bad_token_is_401_invalid(keygate: Keygate, token: str) -> None:
    resp = await keygate.client.get("/a", headers={"X-API-Key": token})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
