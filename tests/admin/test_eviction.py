"""Every kind of admin change is visible at the proxy on the very next request."""

from __future__ import annotations

from tests.support.admin import AdminApi, Member

ECHO_GET = {"route": "default", "methods": ["GET"], "paths": ["/echo/**"]}
OTHER_GET = {"route": "default", "methods": ["GET"], "paths": ["/other/**"]}


async def test_disable_key_next_proxy_request_is_key_disabled(api: AdminApi) -> None:
    token = await api.make_key("admin", ["default"])
    assert (await api.proxy(token)).status == 200  # now cached
    await api.patch(f"/keys/{token.split('_')[1]}", api.admin, {"status": "disabled"})
    reply = await api.proxy(token)
    assert (reply.status, reply.code) == (401, "key_disabled")


async def test_narrow_user_groups_next_proxy_request_is_403(api: AdminApi, alice: Member) -> None:
    token = await api.make_key("alice", ["default"])
    assert (await api.proxy(token)).status == 200
    await api.patch("/users/alice", api.admin, {"groups": ["self-service"]})
    reply = await api.proxy(token)
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_widen_user_groups_back_next_proxy_request_is_200(
    api: AdminApi, alice: Member
) -> None:
    token = await api.make_key("alice", ["default"])
    await api.patch("/users/alice", api.admin, {"groups": ["self-service"]})
    assert (await api.proxy(token)).status == 403
    await api.patch("/users/alice", api.admin, {"groups": ["default", "self-service"]})
    assert (await api.proxy(token)).status == 200


async def test_change_group_rules_flips_proxy_decisions(api: AdminApi, alice: Member) -> None:
    await api.post("/groups", api.admin, {"name": "echo-get", "rules": [ECHO_GET]})
    await api.patch("/users/alice", api.admin, {"groups": ["echo-get", "self-service"]})
    token = await api.make_key("alice", ["echo-get"])
    assert (await api.proxy(token, "/echo/x")).status == 200
    assert (await api.proxy(token, "/other/x")).status == 403

    await api.patch("/groups/echo-get", api.admin, {"rules": [OTHER_GET]})
    assert (await api.proxy(token, "/echo/x")).status == 403
    assert (await api.proxy(token, "/other/x")).status == 200

    await api.patch("/groups/echo-get", api.admin, {"rules": [ECHO_GET]})
    assert (await api.proxy(token, "/echo/x")).status == 200
    assert (await api.proxy(token, "/other/x")).status == 403


async def test_force_delete_group_next_proxy_request_is_403(api: AdminApi, alice: Member) -> None:
    await api.post("/groups", api.admin, {"name": "echo-get", "rules": [ECHO_GET]})
    await api.patch("/users/alice", api.admin, {"groups": ["echo-get", "self-service"]})
    token = await api.make_key("alice", ["echo-get"])
    assert (await api.proxy(token, "/echo/x")).status == 200
    await api.delete("/groups/echo-get", api.admin, params={"force": "true"})
    assert (await api.proxy(token, "/echo/x")).status == 403


async def test_change_key_groups_next_proxy_request_follows(api: AdminApi) -> None:
    token = await api.make_key("admin", ["default"])
    assert (await api.proxy(token)).status == 200
    await api.patch(f"/keys/{token.split('_')[1]}", api.admin, {"groups": ["self-service"]})
    assert (await api.proxy(token)).status == 403


async def test_disable_user_next_proxy_request_is_401(api: AdminApi, alice: Member) -> None:
    token = await api.make_key("alice", ["default"])
    assert (await api.proxy(token)).status == 200
    await api.patch("/users/alice", api.admin, {"status": "disabled"})
    assert (await api.proxy(token)).code == "invalid_api_key"
    await api.patch("/users/alice", api.admin, {"status": "active"})
    assert (await api.proxy(token)).status == 200


async def test_expiry_set_in_patch_applies_at_proxy(api: AdminApi) -> None:
    token = await api.make_key("admin", ["default"])
    assert (await api.proxy(token)).status == 200
    reply = await api.patch(f"/keys/{token.split('_')[1]}", api.admin, {"expires_in": 3600})
    assert reply.json["expires_at"] is not None
    assert (await api.proxy(token)).status == 200
