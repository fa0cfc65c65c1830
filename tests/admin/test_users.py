"""/api/v1/users (admin only): CRUD, validation, and what user changes do to keys."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.admin import AdminApi, Member, make_member

USER_FIELDS = {"id", "username", "role", "groups", "status", "created_at", "updated_at"}


async def test_create_user_is_201_with_record(api: AdminApi) -> None:
    reply = await api.post("/users", api.admin, {"username": "carol", "groups": ["default"]})
    assert reply.status == 201
    assert set(reply.json) == USER_FIELDS
    assert (reply.json["username"], reply.json["role"], reply.json["status"]) == (
        "carol",
        "member",
        "active",
    )
    assert reply.json["groups"] == ["default"]


async def test_create_user_admin_role_may_hold_everything(api: AdminApi) -> None:
    reply = await api.post("/users", api.admin, {"username": "root2", "role": "admin"})
    assert reply.status == 201
    assert reply.json["role"] == "admin"


async def test_get_user_returns_record(api: AdminApi, alice: Member) -> None:
    reply = await api.get("/users/alice", api.admin)
    assert reply.status == 200
    assert reply.json["groups"] == ["default", "self-service"]


async def test_get_unknown_user_is_404(api: AdminApi) -> None:
    reply = await api.get("/users/ghost", api.admin)
    assert reply.status == 404
    assert reply.code == "not_found"


async def test_get_username_with_at_sign_round_trips(api: AdminApi) -> None:
    await api.make_user("dana@example.org", [])
    reply = await api.get("/users/dana%40example.org", api.admin)
    assert reply.status == 200
    assert reply.json["username"] == "dana@example.org"


async def test_list_users_sorted_and_paginated(api: AdminApi) -> None:
    for name in ("erin", "carol", "dave"):
        await api.make_user(name, [])
    first = await api.get("/users", api.admin, params={"limit": "2"})
    assert [u["username"] for u in first.json["items"]] == ["admin", "carol"]
    cursor = first.json["next_cursor"]
    assert cursor is not None
    second = await api.get("/users", api.admin, params={"limit": "2", "cursor": cursor})
    assert [u["username"] for u in second.json["items"]] == ["dave", "erin"]
    assert second.json["next_cursor"] is None


@pytest.mark.parametrize("limit", ["0", "501", "x"])
async def test_list_users_bad_limit_is_422(api: AdminApi, limit: str) -> None:
    reply = await api.get("/users", api.admin, params={"limit": limit})
    assert reply.status == 422
    assert "limit" in reply.details


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"groups": ["default"]}, {"groups": ["default"]}),
        ({"status": "disabled"}, {"status": "disabled"}),
        ({"role": "admin"}, {"role": "admin"}),
    ],
)
async def test_update_user_field_is_written(
    api: AdminApi, alice: Member, change: dict[str, Any], expect: dict[str, Any]
) -> None:
    reply = await api.patch("/users/alice", api.admin, change)
    assert reply.status == 200, reply.raw
    assert {k: reply.json[k] for k in expect} == expect


async def test_delete_user_is_204_and_revokes_their_keys(api: AdminApi, alice: Member) -> None:
    assert (await api.proxy(alice.token)).status == 403  # self-service only: no proxy rule
    second = await api.make_key("alice", ["default"])
    assert (await api.proxy(second)).status == 200
    reply = await api.delete("/users/alice", api.admin)
    assert reply.status == 204
    assert reply.raw == b""
    assert (await api.proxy(second)).code == "invalid_api_key"
    assert (await api.get("/me", alice.token)).status == 401
    assert (await api.get("/users/alice", api.admin)).status == 404
    key = await api.get(f"/keys/{alice.key_id}", api.admin)
    assert key.json["status"] == "revoked"


async def test_disable_user_makes_all_their_keys_fail(api: AdminApi, alice: Member) -> None:
    second = await api.make_key("alice", ["default"])
    await api.patch("/users/alice", api.admin, {"status": "disabled"})
    assert (await api.proxy(second)).code == "invalid_api_key"
    assert (await api.get("/me", alice.token)).code == "invalid_api_key"


async def test_demote_admin_takes_admin_api_from_their_key_at_once(api: AdminApi) -> None:
    await api.make_user("root2", [], role="admin")
    token = await api.make_key("root2", ["admin"])
    assert (await api.get("/users", token)).status == 200
    reply = await api.patch("/users/root2", api.admin, {"role": "member"})
    assert reply.status == 200
    refused = await api.get("/users", token)
    assert refused.status == 403
    assert refused.code == "forbidden"
    assert (await api.get("/me", token)).status == 403


async def test_demote_last_admin_is_409(api: AdminApi) -> None:
    reply = await api.patch("/users/admin", api.admin, {"role": "member"})
    assert reply.status == 409
    assert reply.code == "last_admin"
    assert (await api.delete("/users/admin", api.admin)).code == "last_admin"


async def test_create_duplicate_username_is_409(api: AdminApi, alice: Member) -> None:
    reply = await api.post("/users", api.admin, {"username": "alice"})
    assert reply.status == 409
    assert reply.code == "username_taken"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "username"),
        ({"username": ""}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": 5}, "username"),
        ({"username": "x" * 65}, "username"),
        ({"username": "carol", "role": "root"}, "role"),
        ({"username": "carol", "groups": ["admin"]}, "groups"),
        ({"username": "carol", "groups": ["nope"]}, "groups"),
        ({"username": "carol", "groups": "default"}, "groups"),
        ({"username": "carol", "status": "active"}, "status"),
        ({"username": "carol", "id": "u_1"}, "id"),
        ({"username": "carol", "created_at": "2001-01-01T00:00:00Z"}, "created_at"),
    ],
)
async def test_create_user_invalid_is_422(api: AdminApi, body: dict[str, Any], field: str) -> None:
    reply = await api.post("/users", api.admin, body)
    assert reply.status == 422, reply.raw
    assert field in reply.details


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"groups": ["admin"]}, "groups"),
        ({"status": "deleted"}, "status"),
        ({"role": 1}, "role"),
        ({"username": "alicia"}, "username"),
        ({"id": "u_x"}, "id"),
    ],
)
async def test_update_user_invalid_is_422_and_unchanged(
    api: AdminApi, alice: Member, body: dict[str, Any], field: str
) -> None:
    before = (await api.get("/users/alice", api.admin)).json
    reply = await api.patch("/users/alice", api.admin, body)
    assert reply.status == 422
    assert field in reply.details
    assert (await api.get("/users/alice", api.admin)).json == before


async def test_users_member_is_403_on_every_method(api: AdminApi, alice: Member) -> None:
    for method, path, body in [
        ("GET", "/users", None),
        ("POST", "/users", {"username": "x"}),
        ("GET", "/users/alice", None),
        ("PATCH", "/users/alice", {"groups": ["admin"]}),
        ("DELETE", "/users/bob", None),
    ]:
        args: dict[str, Any] = {} if body is None else {"json": body}
        reply = await api.call(method, path, alice.token, **args)
        assert (method, path, reply.status) == (method, path, 403)


async def test_make_member_helper_creates_distinct_owners(api: AdminApi) -> None:
    one = await make_member(api, "one")
    two = await make_member(api, "two")
    assert one.key_id != two.key_id
