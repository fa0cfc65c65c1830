"""POST /api/v1/keys/import: admin only, up to 10,000 records, all or none
(docs/admin-api.md#import-keys)."""

from __future__ import annotations

import gzip
import io

import orjson

from tests.support.admin import AdminApi, Member

RECORDS = [
    {"key": "api-import-key-0001", "name": "partner", "groups": ["default"]},
    {"key": "api-import-key-0002", "name": "partner", "groups": "default",
     "expires_at": "2099-01-01T00:00:00Z", "metadata": {"crm": "A-17"}},
]  # fmt: skip


async def test_import_admin_imports_then_keys_work(api: AdminApi) -> None:
    reply = await api.post("/keys/import", api.admin, {"records": RECORDS, "source": "crm"})
    assert reply.status == 200, reply.raw
    assert reply.json == {
        "total": 2, "imported": 2, "skipped": 0, "invalid": [], "over_limit": [],
        "dry_run": False,
    }  # fmt: skip
    for record in RECORDS:
        assert (await api.proxy(str(record["key"]))).status == 200
    keys = (await api.get("/keys", api.admin, params={"search": "partner"})).json["items"]
    assert sorted(k["name"] for k in keys) == ["partner", "partner-2"]
    assert {k["metadata"]["imported_from"] for k in keys} == {"crm"}
    assert sorted(k["display"] for k in keys) == ["…0001", "…0002"]
    # Again: nothing new.
    again = await api.post("/keys/import", api.admin, {"records": RECORDS})
    assert (again.json["imported"], again.json["skipped"]) == (0, 2)
    audit = await api.get("/audit", api.admin, params={"target": keys[0]["id"]})
    assert [a["action"] for a in audit.json["items"]] == ["key.import"]
    assert "api-import-key" not in audit.raw.decode()


async def test_import_invalid_record_is_422_naming_it_and_writes_nothing(api: AdminApi) -> None:
    body = {"records": [RECORDS[0], {"key": "short"}, {"key": RECORDS[0]["key"]}, 7]}
    reply = await api.post("/keys/import", api.admin, body)
    assert (reply.status, reply.code) == (422, "invalid")
    assert reply.details == {
        "records[1]": "the key is shorter than 16 characters",
        "records[2]": "the same key as records[0]",
        "records[3]": "a record must be a JSON object",
    }
    assert (await api.proxy(str(RECORDS[0]["key"]))).status == 401


async def test_import_empty_records_is_422(api: AdminApi) -> None:
    reply = await api.post("/keys/import", api.admin, {"records": []})
    assert (reply.status, reply.details) == (422, {"records": "must hold at least one record"})


async def test_import_over_10000_records_is_422(api: AdminApi) -> None:
    records = [{"key": f"too-many-records-{i:06d}"} for i in range(10_001)]
    reply = await api.post("/keys/import", api.admin, {"records": records})
    assert (reply.status, list(reply.details)) == (422, ["records"])
    assert (await api.proxy("too-many-records-000000")).status == 401


async def test_import_body_over_8_mib_is_413(api: AdminApi) -> None:
    records = [{"key": f"huge-record-{i:08d}", "description": "x" * 900} for i in range(9500)]
    reply = await api.call(
        "POST",
        "/keys/import",
        api.admin,
        headers={"Content-Type": "application/json"},
        data=io.BytesIO(orjson.dumps({"records": records})),  # streamed: over 8 MiB
    )
    assert (reply.status, reply.code) == (413, "too_large")


async def test_import_10000_records_gzipped_in_one_request(api: AdminApi) -> None:
    records = [{"key": f"bulk-import-key-{i:06d}", "name": "bulk"} for i in range(10_000)]
    body = gzip.compress(orjson.dumps({"records": records, "dry_run": True}))
    reply = await api.call(
        "POST",
        "/keys/import",
        api.admin,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        data=body,
    )
    assert reply.status == 200, reply.raw[:300]
    assert (reply.json["imported"], reply.json["dry_run"]) == (10_000, True)


async def test_import_self_service_is_403(api: AdminApi, alice: Member) -> None:
    reply = await api.post("/keys/import", alice.token, {"records": RECORDS})
    assert (reply.status, reply.code) == (403, "forbidden")
    assert (await api.proxy(str(RECORDS[0]["key"]))).status == 401


async def test_import_unknown_field_and_bad_shape(api: AdminApi) -> None:
    reply = await api.post("/keys/import", api.admin, {"records": RECORDS, "colour": 1})
    assert (reply.status, reply.details) == (422, {"colour": "unknown field"})
    reply = await api.post("/keys/import", api.admin, {"records": {"key": "x"}})
    assert (reply.status, reply.details) == (422, {"records": "must be a list of key records"})
