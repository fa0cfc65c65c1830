"""/api/v1/groups (admin only): CRUD, rule validation, built-ins, groups in use."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.admin import AdminApi, Member

RULE = {"route": "default", "methods": ["GET", "HEAD"], "paths": ["/billing/**"]}


async def make_group(api: AdminApi, name: str, rules: list[dict[str, Any]] | None = None) -> Any:
    reply = await api.post(
        "/groups", api.admin, {"name": name, "description": f"{name} group", "rules": rules or []}
    )
    assert reply.status == 201, reply.raw
    return reply.json


async def test_list_groups_has_builtins_and_null_cursor(api: AdminApi) -> None:
    reply = await api.get("/groups", api.admin)
    assert reply.status == 200
    names = {g["name"]: g for g in reply.json["items"]}
    assert {"admin", "self-service", "default"} <= set(names)
    assert names["default"]["builtin"] is True
    assert reply.json["next_cursor"] is None


async def test_create_group_with_rules_is_201(api: AdminApi) -> None:
    group = await make_group(api, "billing-read", [RULE])
    assert group["name"] == "billing-read"
    assert group["rules"] == [RULE]
    assert group["builtin"] is False
    assert (await api.get("/groups/billing-read", api.admin)).json == group


async def test_create_duplicate_group_is_409(api: AdminApi) -> None:
    await make_group(api, "ops")
    reply = await api.post("/groups", api.admin, {"name": "ops"})
    assert reply.status == 409
    assert reply.code == "group_exists"


async def test_update_group_rules_and_description(api: AdminApi) -> None:
    await make_group(api, "ops")
    reply = await api.patch("/groups/ops", api.admin, {"description": "operators", "rules": [RULE]})
    assert reply.status == 200
    assert (reply.json["description"], reply.json["rules"]) == ("operators", [RULE])


async def test_get_unknown_group_is_404(api: AdminApi) -> None:
    assert (await api.get("/groups/nope", api.admin)).status == 404
    assert (await api.patch("/groups/nope", api.admin, {})).status == 404
    assert (await api.delete("/groups/nope", api.admin)).status == 404


@pytest.mark.parametrize("name", ["admin", "self-service", "default"])
async def test_builtin_group_change_or_delete_is_403(api: AdminApi, name: str) -> None:
    patched = await api.patch(f"/groups/{name}", api.admin, {"description": "mine"})
    assert patched.status == 403
    assert patched.code == "forbidden"
    deleted = await api.delete(f"/groups/{name}", api.admin, params={"force": "true"})
    assert deleted.status == 403
    assert (await api.get(f"/groups/{name}", api.admin)).status == 200


async def test_delete_unused_group_is_204(api: AdminApi) -> None:
    await make_group(api, "ops")
    reply = await api.delete("/groups/ops", api.admin)
    assert reply.status == 204
    assert reply.raw == b""
    assert (await api.get("/groups/ops", api.admin)).status == 404


async def test_delete_group_in_use_is_409_unless_forced(api: AdminApi, alice: Member) -> None:
    await make_group(api, "ops", [RULE])
    await api.patch("/users/alice", api.admin, {"groups": ["default", "ops", "self-service"]})
    token = await api.make_key("alice", ["ops"])
    reply = await api.delete("/groups/ops", api.admin)
    assert reply.status == 409
    assert reply.code == "group_in_use"
    assert (await api.delete("/groups/ops", api.admin, params={"force": "false"})).status == 409
    forced = await api.delete("/groups/ops", api.admin, params={"force": "true"})
    assert forced.status == 204
    user = await api.get("/users/alice", api.admin)
    assert "ops" not in user.json["groups"]
    key = await api.get(f"/keys/{token.split('_')[1]}", api.admin)
    assert key.json["groups"] == []


async def test_delete_bad_force_value_is_422(api: AdminApi) -> None:
    await make_group(api, "ops")
    reply = await api.delete("/groups/ops", api.admin, params={"force": "maybe"})
    assert reply.status == 422
    assert "force" in reply.details


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "Ops"}, "name"),
        ({"name": "-ops"}, "name"),
        ({"name": "o" * 65}, "name"),
        ({"name": 3}, "name"),
        ({"name": "ops", "builtin": True}, "builtin"),
        ({"name": "ops", "description": 3}, "description"),
        ({"name": "ops", "rules": {}}, "rules"),
        ({"name": "ops", "rules": ["x"]}, "rules[0]"),
        ({"name": "ops", "rules": [{**RULE, "route": "nope"}]}, "rules[0].route"),
        ({"name": "ops", "rules": [{**RULE, "methods": []}]}, "rules[0].methods"),
        ({"name": "ops", "rules": [{**RULE, "methods": ["get"]}]}, "rules[0].methods[0]"),
        ({"name": "ops", "rules": [{**RULE, "paths": ["billing"]}]}, "rules[0].paths[0]"),
        ({"name": "ops", "rules": [{**RULE, "paths": ["/a/../b"]}]}, "rules[0].paths[0]"),
        ({"name": "ops", "rules": [{**RULE, "paths": ["/a*b"]}]}, "rules[0].paths[0]"),
        ({"name": "ops", "rules": [{**RULE, "extra": 1}]}, "rules[0].extra"),
        ({"name": "ops", "rules": [{"route": "*", "methods": ["*"]}]}, "rules[0].paths"),
    ],
)
async def test_create_group_invalid_is_422(api: AdminApi, body: dict[str, Any], field: str) -> None:
    reply = await api.post("/groups", api.admin, body)
    assert reply.status == 422, reply.raw
    assert field in reply.details


@pytest.mark.parametrize(
    ("body", "field"),
    [({"name": "renamed"}, "name"), ({"rules": "all"}, "rules"), ({"builtin": True}, "builtin")],
)
async def test_update_group_invalid_is_422(api: AdminApi, body: dict[str, Any], field: str) -> None:
    await make_group(api, "ops")
    reply = await api.patch("/groups/ops", api.admin, body)
    assert reply.status == 422
    assert field in reply.details


async def test_groups_member_is_403(api: AdminApi, alice: Member) -> None:
    assert (await api.get("/groups", alice.token)).status == 403
    assert (await api.post("/groups", alice.token, {"name": "mine"})).status == 403
