"""The audit trail: who, what, target, when and from where — never a token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.admin import AdminApi, Member
from tests.support.gateway import key_id


async def audit_since(api: AdminApi, first_id: int) -> list[dict[str, Any]]:
    items = (await api.get("/audit", api.admin, params={"limit": "500"})).json["items"]
    return [r for r in items if r["id"] > first_id][::-1]  # oldest first


async def test_audit_sequence_of_admin_changes_is_recorded_in_order(api: AdminApi) -> None:
    start = (await api.get("/audit", api.admin, params={"limit": "1"})).json["items"][0]["id"]
    tokens: list[str] = []
    await api.post("/users", api.admin, {"username": "carol", "groups": ["default"]})
    created = await api.post(
        "/keys", api.admin, {"owner": "carol", "groups": ["default"], "name": "carol-1"}
    )
    tokens.append(created.json["token"])
    kid = created.json["key"]["id"]
    await api.patch(f"/keys/{kid}", api.admin, {"name": "carol-one"})
    await api.patch(f"/keys/{kid}", api.admin, {"status": "disabled"})
    await api.patch(f"/keys/{kid}", api.admin, {"status": "active"})
    rolled = await api.post(f"/keys/{kid}/roll", api.admin, {"grace_seconds": 5})
    tokens.append(rolled.json["token"])
    await api.post(f"/keys/{kid}/revoke", api.admin)
    await api.delete(f"/keys/{kid}", api.admin)
    await api.post("/groups", api.admin, {"name": "ops"})
    await api.patch("/groups/ops", api.admin, {"description": "operators"})
    await api.delete("/groups/ops", api.admin)
    await api.patch("/users/carol", api.admin, {"groups": []})
    await api.delete("/users/carol", api.admin)

    records = await audit_since(api, start)
    assert [(r["action"], r["target"]["type"], r["target"]["id"]) for r in records] == [
        ("user.create", "user", "carol"),
        ("key.create", "key", kid),
        ("key.update", "key", kid),
        ("key.disable", "key", kid),
        ("key.enable", "key", kid),
        ("key.roll", "key", kid),
        ("key.revoke", "key", kid),
        ("key.delete", "key", kid),
        ("group.create", "group", "ops"),
        ("group.update", "group", "ops"),
        ("group.delete", "group", "ops"),
        ("user.update", "user", "carol"),
        ("user.delete", "user", "carol"),
    ]
    me = (await api.get("/me", api.admin)).json
    for record in records:
        assert record["actor"] == {
            "user_id": me["user"]["id"],
            "username": "admin",
            "key_id": key_id(api.admin),
        }
        assert record["client_addr"] == "127.0.0.1"
        assert record["at"].endswith("Z")
    assert records[1]["changes"]["owner"] == "carol"
    assert records[2]["changes"] == {"name": "carol-one"}
    assert records[5]["changes"] == {"grace_seconds": 5}
    raw = (await api.get("/audit", api.admin, params={"limit": "500"})).raw.decode()
    for token in [*tokens, api.admin]:
        assert token not in raw
        assert token.split("_")[2] not in raw  # not even the secret part


async def test_audit_member_action_names_member_and_their_key(api: AdminApi, alice: Member) -> None:
    created = await api.post("/keys", alice.token, {"groups": ["default"], "name": "laptop"})
    latest = (await api.get("/audit", api.admin, params={"limit": "1"})).json["items"][0]
    assert latest["action"] == "key.create"
    assert latest["target"]["id"] == created.json["key"]["id"]
    assert latest["actor"]["username"] == "alice"
    assert latest["actor"]["key_id"] == alice.key_id


async def test_audit_refused_change_leaves_no_record(api: AdminApi) -> None:
    before = (await api.get("/audit", api.admin, params={"limit": "1"})).json["items"][0]["id"]
    await api.post("/keys", api.admin, {"groups": ["nope"]})
    await api.patch("/groups/admin", api.admin, {"description": "x"})
    after = (await api.get("/audit", api.admin, params={"limit": "1"})).json["items"][0]["id"]
    assert after == before


async def test_audit_filters_by_target_and_actor(api: AdminApi, alice: Member) -> None:
    mine = (await api.post("/keys", alice.token, {"groups": ["self-service"]})).json["key"]["id"]
    await api.patch(f"/keys/{mine}", api.admin, {"name": "renamed"})
    by_target = await api.get("/audit", api.admin, params={"target_type": "key", "target": mine})
    assert [i["action"] for i in by_target.json["items"]] == ["key.update", "key.create"]
    by_actor = await api.get("/audit", api.admin, params={"actor": "alice"})
    assert [i["target"]["id"] for i in by_actor.json["items"]] == [mine]
    both = await api.get("/audit", api.admin, params={"target": mine, "actor": "admin"})
    assert [i["action"] for i in both.json["items"]] == ["key.update"]
    paged = await api.get("/audit", api.admin, params={"target": mine, "limit": "1"})
    cursor = paged.json["next_cursor"]
    rest = await api.get("/audit", api.admin, params={"target": mine, "cursor": cursor})
    assert [i["action"] for i in rest.json["items"]] == ["key.create"]


@pytest.mark.parametrize(
    "params",
    [{"target_type": "nope"}, {"target": ""}, {"actor": ""}, {"actor": "a\x00b"}],
)
async def test_audit_bad_filter_is_422(api: AdminApi, params: dict[str, str]) -> None:
    reply = await api.get("/audit", api.admin, params=params)
    assert (reply.status, reply.code) == (422, "invalid")
