"""Query parameters of the list endpoints: empty values, integral numbers
(docs/admin-api.md, "Query parameters" and "Numbers")."""

from __future__ import annotations

import pytest

from tests.support.admin import AdminApi, Member


@pytest.mark.parametrize("name", ["status", "limit", "cursor", "owner", "group"])
async def test_list_keys_empty_parameter_is_422_naming_it(api: AdminApi, name: str) -> None:
    reply = await api.get("/keys", api.admin, params={name: ""})
    assert reply.status == 422, reply.raw
    assert reply.code == "invalid"
    assert name in reply.details


async def test_list_keys_empty_search_is_no_filter(api: AdminApi, alice: Member) -> None:
    every = (await api.get("/keys", api.admin)).json["items"]
    reply = await api.get("/keys", api.admin, params={"search": ""})
    assert reply.status == 200
    assert reply.json["items"] == every and len(every) == 2


@pytest.mark.parametrize("path", ["/users", "/audit"])
@pytest.mark.parametrize("name", ["limit", "cursor"])
async def test_list_users_and_audit_empty_parameter_is_422(
    api: AdminApi, path: str, name: str
) -> None:
    reply = await api.get(path, api.admin, params={name: ""})
    assert reply.status == 422, reply.raw
    assert name in reply.details


async def test_delete_group_empty_force_is_422_and_group_kept(api: AdminApi) -> None:
    assert (await api.post("/groups", api.admin, {"name": "g1"})).status == 201
    reply = await api.delete("/groups/g1", api.admin, params={"force": ""})
    assert reply.status == 422
    assert "force" in reply.details
    assert (await api.get("/groups/g1", api.admin)).status == 200


@pytest.mark.parametrize("path", ["/keys", "/users", "/audit"])
@pytest.mark.parametrize(("raw", "size"), [("1.0", 1), ("2.00", 2), ("1.", 1)])
async def test_list_integral_decimal_limit_is_that_integer(
    api: AdminApi, alice: Member, path: str, raw: str, size: int
) -> None:
    reply = await api.get(path, api.admin, params={"limit": raw})
    assert reply.status == 200, reply.raw
    assert len(reply.json["items"]) == size


@pytest.mark.parametrize("raw", ["1.5", "1e2", "0.0", "501.0", "-1.0", ".0"])
async def test_list_non_integral_or_out_of_range_limit_is_422(api: AdminApi, raw: str) -> None:
    reply = await api.get("/keys", api.admin, params={"limit": raw})
    assert reply.status == 422
    assert "limit" in reply.details


@pytest.mark.parametrize(("grace", "status"), [(60.0, 200), (0.0, 200), (1e1, 200), (2.5, 422)])
async def test_roll_grace_seconds_integral_float_is_an_integer(
    api: AdminApi, plain_token: str, grace: float, status: int
) -> None:
    kid = plain_token.split("_")[1]
    reply = await api.post(f"/keys/{kid}/roll", api.admin, {"grace_seconds": grace})
    assert reply.status == status, reply.raw
    if status == 422:
        assert "grace_seconds" in reply.details


@pytest.mark.parametrize(("expires_in", "status"), [(915919.0, 201), (3600.5, 422)])
async def test_create_expires_in_integral_float_is_seconds(
    api: AdminApi, expires_in: float, status: int
) -> None:
    reply = await api.post("/keys", api.admin, {"groups": ["default"], "expires_in": expires_in})
    assert reply.status == status, reply.raw
