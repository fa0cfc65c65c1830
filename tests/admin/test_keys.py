"""/api/v1/keys: success paths per role, filters, object-level access between owners."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.admin import AdminApi, Member
from tests.support.admin import create_key as create

KEY_FIELDS = {
    "id",
    "display",
    "name",
    "description",
    "status",
    "groups",
    "owner",
    "created_by",
    "created_at",
    "updated_at",
    "last_used_at",
    "expires_at",
    "webhook_url",
    "metadata",
    "disabled_by",
    "rate_limits",
    "quota",
    "quota_used",
    "quota_resets_at",
    "allowed_ips",
    "avatar_url",
}


# --- admin: success paths --------------------------------------------------------
async def test_create_admin_for_self_returns_record_and_token_once(api: AdminApi) -> None:
    created = await create(api, api.admin, name="billing-sync", description="nightly")
    key, token = created["key"], created["token"]
    assert set(key) == KEY_FIELDS
    assert token.startswith(f"kg_{key['id']}_")
    assert key["display"] == f"kg_{key['id']}_…{token[-4:]}"
    assert key["owner"]["username"] == "admin"
    assert key["created_by"]["username"] == "admin"
    assert (key["name"], key["status"], key["groups"]) == ("billing-sync", "active", ["default"])
    shown = await api.get(f"/keys/{key['id']}", api.admin)
    assert token not in shown.raw.decode()
    assert (await api.proxy(token)).status == 200


async def test_create_default_name_is_key_id(api: AdminApi) -> None:
    key = (await create(api, api.admin))["key"]
    assert key["name"] == f"key-{key['id']}"


async def test_create_admin_for_another_user_sets_owner(api: AdminApi, alice: Member) -> None:
    key = (await create(api, api.admin, owner="alice"))["key"]
    assert key["owner"]["username"] == "alice"
    assert key["created_by"]["username"] == "admin"


async def test_create_with_expiry_and_extras_round_trips(api: AdminApi) -> None:
    key = (
        await create(
            api,
            api.admin,
            expires_in="7d",
            webhook_url="https://hooks.example/k",
            metadata={"team": "billing", "n": 1},
        )
    )["key"]
    expires = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)
    assert key["webhook_url"] == "https://hooks.example/k"
    assert key["metadata"] == {"team": "billing", "n": 1}


async def test_get_admin_any_key_returns_record(api: AdminApi, alice: Member) -> None:
    reply = await api.get(f"/keys/{alice.key_id}", api.admin)
    assert reply.status == 200
    assert reply.json["owner"]["username"] == "alice"


async def test_get_unknown_key_is_404(api: AdminApi) -> None:
    reply = await api.get("/keys/zzzzzzzzzzzz", api.admin)
    assert reply.status == 404
    assert reply.code == "not_found"


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"name": "renamed"}, {"name": "renamed"}),
        ({"description": "new words"}, {"description": "new words"}),
        ({"groups": ["default", "self-service"]}, {"groups": ["default", "self-service"]}),
        ({"status": "disabled"}, {"status": "disabled"}),
        ({"expires_at": None}, {"expires_at": None}),
        ({"webhook_url": "https://hook.example/x"}, {"webhook_url": "https://hook.example/x"}),
        ({"metadata": {"a": [1, 2]}}, {"metadata": {"a": [1, 2]}}),
    ],
)
async def test_update_admin_field_is_written(
    api: AdminApi, change: dict[str, Any], expect: dict[str, Any]
) -> None:
    key = (await create(api, api.admin, expires_in=3600))["key"]
    reply = await api.patch(f"/keys/{key['id']}", api.admin, change)
    assert reply.status == 200, reply.raw
    assert {k: reply.json[k] for k in expect} == expect
    # The first webhook_url brings the key's signing secret, shown in this answer only.
    answered = reply.json
    secret = answered.pop("webhook_secret", None)
    assert (secret is not None) == ("webhook_url" in change)
    assert (await api.get(f"/keys/{key['id']}", api.admin)).json == answered


async def test_update_disable_then_enable_restores_proxy_access(api: AdminApi) -> None:
    created = await create(api, api.admin)
    path = f"/keys/{created['key']['id']}"
    await api.patch(path, api.admin, {"status": "disabled"})
    assert (await api.proxy(created["token"])).code == "key_disabled"
    reply = await api.patch(path, api.admin, {"status": "active"})
    assert reply.json["status"] == "active"
    assert (await api.proxy(created["token"])).status == 200


async def test_update_empty_body_changes_nothing(api: AdminApi) -> None:
    key = (await create(api, api.admin))["key"]
    reply = await api.patch(f"/keys/{key['id']}", api.admin, {})
    assert reply.status == 200
    assert reply.json == key


async def test_revoke_is_200_with_revoked_record_and_token_dies(api: AdminApi) -> None:
    created = await create(api, api.admin)
    reply = await api.post(f"/keys/{created['key']['id']}/revoke", api.admin)
    assert reply.status == 200
    assert reply.json["status"] == "revoked"
    assert (await api.proxy(created["token"])).code == "invalid_api_key"


async def test_revoke_twice_is_idempotent(api: AdminApi) -> None:
    key = (await create(api, api.admin))["key"]
    await api.post(f"/keys/{key['id']}/revoke", api.admin)
    reply = await api.post(f"/keys/{key['id']}/revoke", api.admin)
    assert reply.status == 200
    assert reply.json["status"] == "revoked"


async def test_delete_is_204_empty_and_record_gone(api: AdminApi) -> None:
    created = await create(api, api.admin)
    reply = await api.delete(f"/keys/{created['key']['id']}", api.admin)
    assert reply.status == 204
    assert reply.raw == b""
    assert (await api.get(f"/keys/{created['key']['id']}", api.admin)).status == 404
    assert (await api.proxy(created["token"])).status == 401


async def test_delete_unknown_key_is_404(api: AdminApi) -> None:
    assert (await api.delete("/keys/zzzzzzzzzzzz", api.admin)).status == 404


# --- list and filters ---------------------------------------------------------------
async def test_list_admin_filters_by_search_status_owner_group(
    api: AdminApi, alice: Member
) -> None:
    billing = (await create(api, api.admin, name="Billing-Sync"))["key"]
    described = (await create(api, api.admin, description="the BILLING reader"))["key"]
    disabled = (await create(api, api.admin, name="off"))["key"]
    await api.patch(f"/keys/{disabled['id']}", api.admin, {"status": "disabled"})

    async def ids(**query: str) -> list[str]:
        reply = await api.get("/keys", api.admin, params=query)
        assert reply.status == 200, reply.raw
        return [k["id"] for k in reply.json["items"]]

    assert await ids(search="billing") == [described["id"], billing["id"]]
    assert await ids(search=billing["id"][3:9].upper()) == [billing["id"]]
    assert await ids(status="disabled") == [disabled["id"]]
    assert await ids(owner="alice") == [alice.key_id]
    assert await ids(group="self-service") == [alice.key_id]
    assert await ids(owner="nobody") == []
    assert await ids(search="billing", unknown_param="ignored") == [described["id"], billing["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "gone"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"cursor": "!!"}, "cursor"),
        ({"search": "x" * 201}, "search"),
    ],
)
async def test_list_bad_query_is_422_with_field(
    api: AdminApi, query: dict[str, str], field: str
) -> None:
    reply = await api.get("/keys", api.admin, params=query)
    assert reply.status == 422
    assert reply.code == "invalid"
    assert field in reply.details


# --- self-service: own keys only ---------------------------------------------------
async def test_create_member_for_self_owner_defaults_to_caller(
    api: AdminApi, alice: Member
) -> None:
    key = (await create(api, alice.token, name="mine"))["key"]
    assert key["owner"]["username"] == "alice"
    assert key["created_by"]["username"] == "alice"
    named = (await create(api, alice.token, owner="alice", name="mine-too"))["key"]
    assert named["owner"]["username"] == "alice"


async def test_create_member_for_another_owner_is_403(
    api: AdminApi, alice: Member, bob: Member
) -> None:
    reply = await api.post("/keys", alice.token, {"groups": ["default"], "owner": "bob"})
    assert reply.status == 403
    assert reply.code == "forbidden"


@pytest.mark.parametrize("group", ["admin", "ops"])
async def test_create_member_group_not_held_is_422(
    api: AdminApi, alice: Member, group: str
) -> None:
    await api.post("/groups", api.admin, {"name": "ops", "rules": []})
    reply = await api.post("/keys", alice.token, {"groups": [group]})
    assert reply.status == 422
    assert "groups" in reply.details


async def test_update_member_grant_group_not_held_is_422(api: AdminApi, alice: Member) -> None:
    reply = await api.patch(f"/keys/{alice.key_id}", alice.token, {"groups": ["admin"]})
    assert reply.status == 422
    assert "groups" in reply.details


async def test_list_member_shows_only_own_keys(api: AdminApi, alice: Member, bob: Member) -> None:
    own = (await create(api, alice.token))["key"]
    reply = await api.get("/keys", alice.token)
    assert {k["id"] for k in reply.json["items"]} == {alice.key_id, own["id"]}
    other = await api.get("/keys", alice.token, params={"owner": "bob"})
    assert other.json["items"] == []


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"name": "mine now"}),
        ("POST", "/revoke", None),
        ("POST", "/roll", None),
        ("DELETE", "", None),
    ],
)
async def test_member_other_owners_key_is_404_and_untouched(
    api: AdminApi, alice: Member, bob: Member, method: str, suffix: str, body: Any
) -> None:
    before = (await api.get(f"/keys/{bob.key_id}", api.admin)).json
    args = {} if body is None else {"json": body}
    reply = await api.call(method, f"/keys/{bob.key_id}{suffix}", alice.token, **args)
    assert reply.status == 404
    assert reply.code == "not_found"
    assert (await api.get(f"/keys/{bob.key_id}", api.admin)).json == before
    assert (await api.get("/me", bob.token)).status == 200


async def test_member_own_key_lifecycle_succeeds(api: AdminApi, alice: Member) -> None:
    created = await create(api, alice.token, name="laptop")
    path = f"/keys/{created['key']['id']}"
    assert (await api.get(path, alice.token)).status == 200
    assert (await api.patch(path, alice.token, {"name": "desktop"})).json["name"] == "desktop"
    rolled = await api.post(path + "/roll", alice.token, {"grace_seconds": 0})
    assert rolled.status == 200
    assert (await api.proxy(rolled.json["token"])).status == 200
    assert (await api.post(path + "/revoke", alice.token)).json["status"] == "revoked"
    assert (await api.delete(path, alice.token)).status == 204
