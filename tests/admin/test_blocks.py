"""Blocks stick (docs/admin-api.md, "Blocks"): what an admin disabled or capped,
a self-service owner cannot undo; ``disabled_by`` tells who disabled a key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.admin import AdminApi, Member
from tests.support.gateway import Keygate
from tests.support.polling import wait_for


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def patch(api: AdminApi, token: str, key_id: str, body: dict[str, Any]) -> Any:
    return await api.patch(f"/keys/{key_id}", token, body)


async def record(api: AdminApi, key_id: str) -> dict[str, Any]:
    reply = await api.get(f"/keys/{key_id}", api.admin)
    assert reply.status == 200
    return dict(reply.json)


async def admin_user(api: AdminApi) -> dict[str, Any]:
    return dict((await api.get("/me", api.admin)).json["user"])


# --- disabled by an admin -------------------------------------------------------
async def test_block_admin_disabled_owner_enable_is_403_and_key_stays_off(
    api: AdminApi, alice: Member
) -> None:
    assert (await patch(api, api.admin, alice.key_id, {"status": "disabled"})).status == 200
    own = await api.proxy(alice.token)
    assert (own.status, own.code) == (401, "key_disabled")
    # The member cannot authenticate with the disabled key itself: use a second one.
    other = (await api.post("/keys", api.admin, {"owner": "alice", "groups": ["self-service"]}))
    second = other.json["token"]
    before = await record(api, alice.key_id)
    reply = await patch(api, second, alice.key_id, {"status": "active"})
    assert reply.status == 403
    assert reply.code == "forbidden"
    assert "admin" in reply.json["error"]["message"]
    assert await record(api, alice.key_id) == before
    assert (await api.proxy(alice.token)).code == "key_disabled"


async def test_block_admin_disabled_records_admin_and_admin_enable_clears(
    api: AdminApi, alice: Member
) -> None:
    admin = await admin_user(api)
    disabled = (await patch(api, api.admin, alice.key_id, {"status": "disabled"})).json
    assert disabled["disabled_by"] == {"id": admin["id"], "username": "admin"}
    enabled = await patch(api, api.admin, alice.key_id, {"status": "active"})
    assert enabled.status == 200
    assert enabled.json["status"] == "active"
    assert enabled.json["disabled_by"] is None
    assert (await api.get("/me", alice.token)).status == 200


async def test_block_owner_disabling_again_keeps_admin_block(
    api: AdminApi, alice: Member
) -> None:
    second = (
        await api.post("/keys", alice.token, {"groups": ["self-service"], "name": "spare"})
    ).json
    spare = second["key"]["id"]
    await patch(api, api.admin, spare, {"status": "disabled"})
    again = await patch(api, alice.token, spare, {"status": "disabled"})
    assert again.status == 200
    assert again.json["disabled_by"]["username"] == "admin"
    assert (await patch(api, alice.token, spare, {"status": "active"})).status == 403


async def test_block_owner_may_change_other_fields_of_admin_disabled_key(
    api: AdminApi, alice: Member
) -> None:
    spare = (await api.post("/keys", alice.token, {"groups": ["self-service"]})).json["key"]
    await patch(api, api.admin, spare["id"], {"status": "disabled"})
    renamed = await patch(api, alice.token, spare["id"], {"name": "renamed"})
    assert renamed.status == 200
    assert (renamed.json["name"], renamed.json["status"]) == ("renamed", "disabled")
    both = await patch(api, alice.token, spare["id"], {"name": "again", "status": "active"})
    assert both.status == 403
    assert (await record(api, spare["id"]))["name"] == "renamed"


async def test_block_refused_enable_leaves_no_audit_record(
    api: AdminApi, alice: Member
) -> None:
    spare = (await api.post("/keys", alice.token, {"groups": ["self-service"]})).json["key"]
    await patch(api, api.admin, spare["id"], {"status": "disabled"})
    before = (await api.get("/audit", api.admin)).json["items"]
    assert (await patch(api, alice.token, spare["id"], {"status": "active"})).status == 403
    assert (await api.get("/audit", api.admin)).json["items"] == before


async def test_block_cli_disable_is_an_admin_block(
    keygate: Keygate, api: AdminApi, alice: Member
) -> None:
    spare = (await api.post("/keys", alice.token, {"groups": ["self-service"]})).json["key"]
    cli = keygate.actor()
    disabled = await keygate.services.keys.set_status(cli, spare["id"], "disabled")
    assert disabled.as_json()["disabled_by"] == {"id": None, "username": cli.username}
    shown = await record(api, spare["id"])
    assert shown["disabled_by"] == {"id": None, "username": cli.username}
    assert (await patch(api, alice.token, spare["id"], {"status": "active"})).status == 403


# --- disabled by the owner ------------------------------------------------------
async def test_block_owner_disabled_owner_may_enable(api: AdminApi, alice: Member) -> None:
    spare = (await api.post("/keys", alice.token, {"groups": ["self-service"]})).json
    key_id, token = spare["key"]["id"], spare["token"]
    disabled = await patch(api, alice.token, key_id, {"status": "disabled"})
    assert disabled.json["disabled_by"]["username"] == "alice"
    await wait_for(lambda: api.proxy_refuses(token), within=2.0, every=0.05, what="a 401")
    enabled = await patch(api, alice.token, key_id, {"status": "active"})
    assert enabled.status == 200
    assert enabled.json["disabled_by"] is None


async def test_block_admin_disabling_owner_disabled_key_takes_it_over(
    api: AdminApi, alice: Member
) -> None:
    spare = (await api.post("/keys", alice.token, {"groups": ["self-service"]})).json["key"]
    await patch(api, alice.token, spare["id"], {"status": "disabled"})
    taken = await patch(api, api.admin, spare["id"], {"status": "disabled"})
    assert taken.json["disabled_by"]["username"] == "admin"
    assert (await patch(api, alice.token, spare["id"], {"status": "active"})).status == 403


async def test_block_disabled_by_is_null_for_active_keys(api: AdminApi, alice: Member) -> None:
    listed = (await api.get("/keys", api.admin)).json["items"]
    assert listed and all(k["disabled_by"] is None for k in listed)


# --- expiry set by an admin -----------------------------------------------------
@pytest.fixture
async def capped(api: AdminApi, alice: Member) -> dict[str, Any]:
    """A key of alice's whose expiry (10 days) an admin set."""
    reply = await api.post(
        "/keys", api.admin, {"owner": "alice", "groups": ["self-service"], "expires_in": "10d"}
    )
    assert reply.status == 201
    return dict(reply.json["key"])


@pytest.mark.parametrize(
    "body",
    [
        {"expires_at": None},
        {"expires_in": None},
        {"expires_in": "20d"},
        {"expires_at": rfc3339(datetime.now(UTC) + timedelta(days=30))},
    ],
)
async def test_block_owner_removing_or_extending_admin_expiry_is_403(
    api: AdminApi, alice: Member, capped: dict[str, Any], body: dict[str, Any]
) -> None:
    reply = await patch(api, alice.token, capped["id"], body)
    assert reply.status == 403
    assert reply.code == "forbidden"
    assert (await record(api, capped["id"]))["expires_at"] == capped["expires_at"]


async def test_block_owner_may_shorten_admin_expiry_but_not_lengthen_it_back(
    api: AdminApi, alice: Member, capped: dict[str, Any]
) -> None:
    shorter = await patch(api, alice.token, capped["id"], {"expires_in": "5d"})
    assert shorter.status == 200
    assert parse(shorter.json["expires_at"]) < parse(capped["expires_at"])
    # Still the admin's: the new time is the ceiling now.
    back = await patch(api, alice.token, capped["id"], {"expires_in": "7d"})
    assert back.status == 403
    assert (await patch(api, alice.token, capped["id"], {"expires_in": "1d"})).status == 200


async def test_block_admin_may_extend_or_clear_its_expiry_then_owner_is_free(
    api: AdminApi, alice: Member, capped: dict[str, Any]
) -> None:
    assert (await patch(api, api.admin, capped["id"], {"expires_in": "30d"})).status == 200
    assert (await patch(api, alice.token, capped["id"], {"expires_in": "40d"})).status == 403
    cleared = await patch(api, api.admin, capped["id"], {"expires_at": None})
    assert cleared.json["expires_at"] is None
    assert (await patch(api, alice.token, capped["id"], {"expires_in": "90d"})).status == 200
    assert (await patch(api, alice.token, capped["id"], {"expires_at": None})).status == 200


async def test_block_owner_expiry_on_own_key_is_free(api: AdminApi, alice: Member) -> None:
    own = (
        await api.post("/keys", alice.token, {"groups": ["self-service"], "expires_in": "1d"})
    ).json["key"]
    assert (await patch(api, alice.token, own["id"], {"expires_in": "30d"})).status == 200
    assert (await patch(api, alice.token, own["id"], {"expires_at": None})).status == 200


async def test_block_admin_expiry_set_by_patch_caps_the_owner(
    api: AdminApi, alice: Member
) -> None:
    own = (await api.post("/keys", alice.token, {"groups": ["self-service"]})).json["key"]
    assert (await patch(api, api.admin, own["id"], {"expires_in": "3d"})).status == 200
    assert (await patch(api, alice.token, own["id"], {"expires_at": None})).status == 403


async def test_block_refused_expiry_change_applies_nothing_else(
    api: AdminApi, alice: Member, capped: dict[str, Any]
) -> None:
    reply = await patch(api, alice.token, capped["id"], {"name": "x", "expires_at": None})
    assert reply.status == 403
    assert (await record(api, capped["id"]))["name"] == capped["name"]
