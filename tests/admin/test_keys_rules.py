"""/api/v1/keys rules: validation, mass assignment, conflicts, revocation, roll, expiry."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.admin import AdminApi, Member, make_member
from tests.support.admin import create_key as create
from tests.support.gateway import GatewayFactory, default_route, key_id
from tests.support.polling import wait_for
from tests.support.upstreams import Recorder

# --- validation ---------------------------------------------------------------------
PAST = "2001-01-01T00:00:00Z"

CREATE_INVALID = [
    ({"groups": ["default"], "colour": "red"}, "colour"),
    ({"groups": ["default"], "name": 5}, "name"),
    ({"groups": ["default"], "name": ""}, "name"),
    ({"groups": ["default"], "name": "x" * 101}, "name"),
    ({"groups": ["default"], "name": " padded"}, "name"),
    ({"groups": ["default"], "name": "two\nlines"}, "name"),
    ({"groups": ["default"], "description": ["x"]}, "description"),
    ({"groups": ["default"], "description": "x" * 1001}, "description"),
    ({}, "groups"),
    ({"groups": "default"}, "groups"),
    ({"groups": [1]}, "groups"),
    ({"groups": ["Not A Name"]}, "groups"),
    ({"groups": ["no-such-group"]}, "groups"),
    ({"groups": ["default"], "expires_at": PAST}, "expires_at"),
    ({"groups": ["default"], "expires_at": "tomorrow"}, "expires_at"),
    ({"groups": ["default"], "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
    ({"groups": ["default"], "expires_at": 1893456000}, "expires_at"),
    ({"groups": ["default"], "expires_in": -5}, "expires_in"),
    ({"groups": ["default"], "expires_in": 0}, "expires_in"),
    ({"groups": ["default"], "expires_in": "7x"}, "expires_in"),
    ({"groups": ["default"], "expires_in": True}, "expires_in"),
    ({"groups": ["default"], "expires_in": 60, "expires_at": None}, "expires_in"),
    ({"groups": ["default"], "webhook_url": "ftp://x.example/"}, "webhook_url"),
    ({"groups": ["default"], "webhook_url": "not a url"}, "webhook_url"),
    ({"groups": ["default"], "metadata": ["x"]}, "metadata"),
    ({"groups": ["default"], "metadata": {"x": "y" * 17000}}, "metadata"),
    ({"groups": ["default"], "owner": "ghost"}, "owner"),
    ({"groups": ["default"], "owner": 7}, "owner"),
    # Mass assignment: server-owned fields are unknown fields.
    ({"groups": ["default"], "id": "aaaaaaaaaaaa"}, "id"),
    ({"groups": ["default"], "digest": "00"}, "digest"),
    ({"groups": ["default"], "created_at": PAST}, "created_at"),
    ({"groups": ["default"], "status": "active"}, "status"),
    ({"groups": ["default"], "token": "kg_x"}, "token"),
]


@pytest.mark.parametrize(("body", "field"), CREATE_INVALID)
async def test_create_invalid_body_is_422_naming_field(
    api: AdminApi, body: dict[str, Any], field: str
) -> None:
    reply = await api.post("/keys", api.admin, body)
    assert reply.status == 422, reply.raw
    assert reply.code == "invalid"
    assert field in reply.details
    listed = await api.get("/keys", api.admin)
    assert len(listed.json["items"]) == 1  # only the bootstrap admin key


async def test_create_several_problems_reports_each_field(api: AdminApi) -> None:
    reply = await api.post(
        "/keys", api.admin, {"name": "", "groups": "x", "bogus": 1, "expires_at": PAST}
    )
    assert reply.status == 422
    assert {"name", "groups", "bogus", "expires_at"} <= set(reply.details)


PATCH_INVALID = [
    ({"id": "aaaaaaaaaaaa"}, "id"),
    ({"digest": "00"}, "digest"),
    ({"created_at": PAST}, "created_at"),
    ({"owner": "bob"}, "owner"),
    ({"created_by": "bob"}, "created_by"),
    ({"last_used_at": None}, "last_used_at"),
    ({"status": "revoked"}, "status"),
    ({"status": "expired"}, "status"),
    ({"name": ""}, "name"),
    ({"groups": ["nope"]}, "groups"),
    ({"expires_at": PAST}, "expires_at"),
    ({"metadata": "x"}, "metadata"),
]


@pytest.mark.parametrize(("body", "field"), PATCH_INVALID)
async def test_update_invalid_or_server_owned_field_is_422_and_unchanged(
    api: AdminApi, bob: Member, body: dict[str, Any], field: str
) -> None:
    before = (await api.get(f"/keys/{bob.key_id}", api.admin)).json
    reply = await api.patch(f"/keys/{bob.key_id}", api.admin, body)
    assert reply.status == 422, reply.raw
    assert field in reply.details
    assert (await api.get(f"/keys/{bob.key_id}", api.admin)).json == before


# --- conflicts ------------------------------------------------------------------------
async def test_create_same_name_case_insensitive_is_409_name_taken(api: AdminApi) -> None:
    await create(api, api.admin, name="Billing")
    reply = await api.post("/keys", api.admin, {"groups": ["default"], "name": "bILLING"})
    assert reply.status == 409
    assert reply.code == "name_taken"


async def test_create_same_name_other_owner_is_allowed(api: AdminApi, alice: Member) -> None:
    await create(api, api.admin, name="shared")
    assert (
        await api.post("/keys", alice.token, {"groups": ["default"], "name": "SHARED"})
    ).status == 201


async def test_update_rename_to_taken_name_is_409(api: AdminApi) -> None:
    await create(api, api.admin, name="first")
    second = (await create(api, api.admin, name="second"))["key"]
    reply = await api.patch(f"/keys/{second['id']}", api.admin, {"name": "FIRST"})
    assert reply.status == 409
    assert reply.code == "name_taken"


async def test_create_over_key_limit_is_409_until_one_is_revoked(
    keygate_factory: GatewayFactory, upstream: Recorder
) -> None:
    api = AdminApi(await keygate_factory(default_route(upstream.url), max_keys_per_user=2))
    second = await create(api, api.admin)  # the bootstrap key is the first
    reply = await api.post("/keys", api.admin, {"groups": ["default"]})
    assert reply.status == 409
    assert reply.code == "key_limit_reached"
    await api.post(f"/keys/{second['key']['id']}/revoke", api.admin)
    assert (await api.post("/keys", api.admin, {"groups": ["default"]})).status == 201


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PATCH", "", {"name": "again"}),
        ("PATCH", "", {"status": "active"}),
        ("POST", "/roll", {"grace_seconds": 0}),
    ],
)
async def test_revoked_key_change_is_409_key_revoked(
    api: AdminApi, method: str, suffix: str, body: dict[str, Any]
) -> None:
    created = await create(api, api.admin)
    path = f"/keys/{created['key']['id']}"
    await api.post(path + "/revoke", api.admin)
    reply = await api.call(method, path + suffix, api.admin, json=body)
    assert reply.status == 409
    assert reply.code == "key_revoked"
    assert (await api.get(path, api.admin)).json["status"] == "revoked"
    assert (await api.proxy(created["token"])).status == 401


# --- roll ---------------------------------------------------------------------------
async def test_roll_without_grace_old_token_dies_new_works(api: AdminApi) -> None:
    created = await create(api, api.admin)
    assert (await api.proxy(created["token"])).status == 200  # cached now
    reply = await api.post(f"/keys/{created['key']['id']}/roll", api.admin)
    assert reply.status == 200
    assert reply.json["key"]["id"] == created["key"]["id"]
    assert reply.json["token"] != created["token"]
    assert reply.json["key"]["display"].endswith(reply.json["token"][-4:])
    assert (await api.proxy(created["token"])).status == 401
    assert (await api.proxy(reply.json["token"])).status == 200


async def test_roll_with_grace_old_token_works_then_expires(api: AdminApi) -> None:
    created = await create(api, api.admin)
    old = created["token"]
    reply = await api.post(f"/keys/{created['key']['id']}/roll", api.admin, {"grace_seconds": 1})
    new = reply.json["token"]
    assert (await api.proxy(old)).status == 200
    assert (await api.proxy(new)).status == 200
    await wait_for(lambda: api.proxy_refuses(old), within=5.0, every=0.05, what="a 401")
    assert (await api.proxy(new)).status == 200


@pytest.mark.parametrize("grace", [-1, 1.5, "10", True, 30 * 86400 + 1])
async def test_roll_bad_grace_is_422(api: AdminApi, grace: object) -> None:
    key = (await create(api, api.admin))["key"]
    reply = await api.post(f"/keys/{key['id']}/roll", api.admin, {"grace_seconds": grace})
    assert reply.status == 422
    assert "grace_seconds" in reply.details


async def test_roll_unknown_field_is_422(api: AdminApi) -> None:
    key = (await create(api, api.admin))["key"]
    reply = await api.post(f"/keys/{key['id']}/roll", api.admin, {"grace": 5})
    assert reply.status == 422
    assert "grace" in reply.details


async def test_expired_key_shows_expired_and_proxy_says_key_expired(api: AdminApi) -> None:
    created = await create(api, api.admin, expires_in=1)
    token = created["token"]
    await wait_for(lambda: api.proxy_refuses(token), within=5.0, every=0.05, what="a 401")
    assert (await api.proxy(created["token"])).code == "key_expired"
    reply = await api.get(f"/keys/{created['key']['id']}", api.admin)
    assert reply.json["status"] == "expired"
    listed = await api.get("/keys", api.admin, params={"status": "expired"})
    assert [k["id"] for k in listed.json["items"]] == [created["key"]["id"]]


async def test_make_member_helper_key_is_self_service(api: AdminApi) -> None:
    carol = await make_member(api, "carol")
    me = await api.get("/me", carol.token)
    assert me.json["key"]["id"] == key_id(carol.token)
    assert me.json["user"]["username"] == "carol"
