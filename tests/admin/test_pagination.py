"""Cursor pagination: newest first, stable while keys are inserted between page fetches."""

from __future__ import annotations

import asyncio

from tests.support.admin import AdminApi
from tests.support.gateway import key_id


async def create_keys(api: AdminApi, count: int, tag: str) -> list[str]:
    ids = []
    for n in range(count):
        reply = await api.post("/keys", api.admin, {"groups": ["default"], "name": f"{tag}-{n}"})
        assert reply.status == 201, reply.raw
        ids.append(reply.json["key"]["id"])
    return ids


async def test_list_keys_first_page_is_newest_first(roomy_api: AdminApi) -> None:
    api = roomy_api
    created = await create_keys(api, 4, "k")
    reply = await api.get("/keys", api.admin, params={"limit": "3"})
    assert [k["id"] for k in reply.json["items"]] == created[::-1][:3]
    assert reply.json["next_cursor"] is not None


async def test_list_keys_default_limit_is_50(roomy_api: AdminApi) -> None:
    api = roomy_api
    await create_keys(api, 55, "k")
    reply = await api.get("/keys", api.admin)
    assert len(reply.json["items"]) == 50
    assert reply.json["next_cursor"] is not None


async def test_list_keys_inserts_between_pages_cause_no_repeat_or_skip(
    roomy_api: AdminApi,
) -> None:
    api = roomy_api
    original = [key_id(api.admin), *await create_keys(api, 17, "old")]
    seen: list[str] = []
    cursor: str | None = None
    rounds = 0
    while True:
        params = {"limit": "4"} if cursor is None else {"limit": "4", "cursor": cursor}
        # Another admin keeps creating keys while this client pages through.
        page, _ = await asyncio.gather(
            api.get("/keys", api.admin, params=params),
            create_keys(api, 2, f"new{rounds}"),
        )
        assert page.status == 200
        seen += [k["id"] for k in page.json["items"]]
        cursor = page.json["next_cursor"]
        rounds += 1
        if cursor is None:
            break
        assert rounds < 20
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in original] == original[::-1]


async def test_list_keys_cursor_from_audit_is_422(api: AdminApi) -> None:
    await api.post("/keys", api.admin, {"groups": ["default"]})
    audit = await api.get("/audit", api.admin, params={"limit": "1"})
    reply = await api.get("/keys", api.admin, params={"cursor": audit.json["next_cursor"]})
    assert reply.status == 422
    assert "cursor" in reply.details


async def test_list_audit_pages_are_disjoint_and_newest_first(api: AdminApi) -> None:
    for n in range(5):
        await api.post("/keys", api.admin, {"groups": ["default"], "name": f"a{n}"})
    everything = (await api.get("/audit", api.admin)).json["items"]
    ids: list[int] = []
    cursor = None
    while True:
        params = {"limit": "2"} if cursor is None else {"limit": "2", "cursor": cursor}
        page = await api.get("/audit", api.admin, params=params)
        assert page.status == 200
        ids += [r["id"] for r in page.json["items"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert ids == [r["id"] for r in everything]
    assert ids == sorted(ids, reverse=True)


async def test_list_audit_bad_limit_or_cursor_is_422(api: AdminApi) -> None:
    for params, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "bm9wZQ"}, "cursor"),
    ]:
        reply = await api.get("/audit", api.admin, params=params)
        assert (reply.status, field in reply.details) == (422, True), params
