"""Input no store can hold (NUL characters) is refused as the client's error, never a 500."""

from __future__ import annotations

import pytest

from tests.support.admin import API, AdminApi


async def test_keys_create_metadata_with_nul_is_422(api: AdminApi) -> None:
    reply = await api.post(
        f"{API}/keys", api.admin, json={"groups": ["default"], "metadata": {"a": "x\u0000y"}}
    )
    assert reply.status == 422
    assert reply.details == {"metadata": "must not contain NUL characters"}


@pytest.mark.parametrize("param", ["search", "owner", "group"])
async def test_keys_list_text_param_with_nul_is_422(api: AdminApi, param: str) -> None:
    reply = await api.get(f"{API}/keys?{param}=a%00b", api.admin)
    assert reply.status == 422
    assert param in reply.details


@pytest.mark.parametrize("path", ["/users", "/keys", "/audit"])
async def test_list_cursor_holding_nul_is_422(api: AdminApi, path: str) -> None:
    import base64

    for tag in ("u", "k", "a"):
        cursor = base64.urlsafe_b64encode(f"{tag}:a\u0000".encode()).decode().rstrip("=")
        reply = await api.get(f"{API}{path}?cursor={cursor}", api.admin)
        assert reply.status == 422, reply.raw
        assert "cursor" in reply.details
