"""The admin middleware: public endpoints, authentication, roles, canonical paths."""

from __future__ import annotations

import pytest

from keygate.admin.routes import ENDPOINTS, Endpoint
from tests.support.admin import PREFIX, AdminApi, Member
from tests.support.gateway import Keygate, key_id
from tests.support.raw import fetch, http

PRIVATE = [ep for ep in ENDPOINTS if not ep.public]
ADMIN_ONLY = [ep for ep in PRIVATE if ep.admin_only]
SELF_SERVICE = [ep for ep in PRIVATE if not ep.admin_only]


def concrete(ep: Endpoint, key: str = "000000000000") -> str:
    return PREFIX + ep.path.format(
        id=key, username="admin", name="default", asset="x", delivery_id="dlv_x"
    )


def ep_id(ep: Endpoint) -> str:
    return f"{ep.method} {ep.path}"


@pytest.mark.parametrize(
    "path",
    [
        "/health",
        "/ready",
        "/openapi.json",
        "/docs",
        "/docs/openapi-3.0.json",
        "/docs/static/swagger-ui.css",
    ],
)
async def test_public_endpoint_without_key_answers(api: AdminApi, path: str) -> None:
    reply = await api.call("GET", PREFIX + path)
    assert reply.status == 200


async def test_health_without_key_is_ok(api: AdminApi) -> None:
    reply = await api.call("GET", PREFIX + "/health")
    assert reply.json == {"status": "ok"}


@pytest.mark.parametrize("ep", PRIVATE, ids=ep_id)
async def test_private_endpoint_without_key_is_401(api: AdminApi, ep: Endpoint) -> None:
    reply = await api.call(ep.method, concrete(ep))
    assert reply.status == 401
    assert reply.code == "missing_api_key"
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="keygate"'


@pytest.mark.parametrize("ep", PRIVATE, ids=ep_id)
async def test_private_endpoint_key_without_role_is_403(
    api: AdminApi, plain_token: str, ep: Endpoint
) -> None:
    reply = await api.call(ep.method, concrete(ep, key_id(plain_token)), plain_token, json={})
    assert reply.status == 403
    assert reply.code == "forbidden"


@pytest.mark.parametrize("ep", ADMIN_ONLY, ids=ep_id)
async def test_admin_endpoint_self_service_member_is_403(
    api: AdminApi, alice: Member, ep: Endpoint
) -> None:
    reply = await api.call(ep.method, concrete(ep), alice.token, json={})
    assert reply.status == 403
    assert reply.code == "forbidden"


@pytest.mark.parametrize("ep", SELF_SERVICE, ids=ep_id)
async def test_key_endpoint_self_service_member_passes_the_gate(
    api: AdminApi, alice: Member, ep: Endpoint
) -> None:
    # Past the middleware: the service answers (own key, or 404/422 — never 403).
    reply = await api.call(ep.method, concrete(ep, "zzzzzzzzzzzz"), alice.token, json={})
    assert reply.status != 403
    assert reply.status < 500


async def test_proxy_key_still_works_at_proxy_while_admin_api_refuses(
    api: AdminApi, plain_token: str
) -> None:
    assert (await api.proxy(plain_token)).status == 200
    assert (await api.get("/me", plain_token)).status == 403


async def test_x_api_key_header_authenticates(api: AdminApi) -> None:
    reply = await api.call("GET", PREFIX + "/api/v1/me", headers={"X-API-Key": api.admin})
    assert reply.status == 200
    assert reply.json["key"]["id"] == key_id(api.admin)


async def test_two_different_keys_are_400_ambiguous(api: AdminApi, alice: Member) -> None:
    reply = await api.get("/me", api.admin, headers={"X-API-Key": alice.token})
    assert reply.status == 400
    assert reply.code == "ambiguous_api_key"


@pytest.mark.parametrize(
    "token",
    ["kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNT", "nonsense", "kg_x_y"],
)
async def test_unknown_or_malformed_key_is_401_invalid(api: AdminApi, token: str) -> None:
    reply = await api.get("/me", token)
    assert reply.status == 401
    assert reply.code == "invalid_api_key"


async def test_disabled_key_is_401_key_disabled(api: AdminApi, alice: Member) -> None:
    await api.patch(f"/keys/{alice.key_id}", api.admin, {"status": "disabled"})
    reply = await api.get("/me", alice.token)
    assert reply.status == 401
    assert reply.code == "key_disabled"


async def test_unknown_admin_path_with_admin_key_is_404_json(api: AdminApi) -> None:
    reply = await api.get(PREFIX + "/api/v1/nothing-here", api.admin)
    assert reply.status == 404
    assert reply.code == "not_found"


async def test_wrong_method_is_405_json_with_allow(api: AdminApi) -> None:
    reply = await api.call("PUT", "/keys", api.admin)
    assert reply.status == 405
    assert reply.code == "method_not_allowed"
    assert reply.headers["Allow"] == "GET, POST"


async def test_wrong_method_on_public_path_is_405_without_key(api: AdminApi) -> None:
    reply = await api.call("POST", PREFIX + "/health")
    assert reply.status == 405
    assert reply.code == "method_not_allowed"


async def test_authenticated_answer_is_not_cacheable(api: AdminApi) -> None:
    reply = await api.get("/me", api.admin)
    assert reply.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "target",
    [
        "/_keygate/api/v1/../v1/me",
        "/_keygate/api/v1/./me",
        "/_keygate/api//v1/me",
        "/_keygate/api/v1/%6De",
        "/_keygate/api/v1/me%2F",
        "/_keygate/%2e%2e/_keygate/api/v1/me",
        "/_keygate/api/v1/keys/..;/users",
        "/_keygate/docs/static/..%2F..%2Fetc%2Fpasswd",
        "/_keygate/docs/static/%2e%2e/%2e%2e/app.py",
        "/_keygate/health/.",
    ],
)
async def test_non_canonical_admin_path_is_400_bad_path(keygate: Keygate, target: str) -> None:
    headers = [("Authorization", f"Bearer {keygate.admin_token}"), ("Connection", "close")]
    reply = await fetch(keygate.port, http("GET", target, headers, host="t"))
    assert reply.status == 400
    assert b'"bad_path"' in reply.body


async def test_absolute_form_target_is_routed_on_its_path_only(keygate: Keygate) -> None:
    headers = [("Authorization", f"Bearer {keygate.admin_token}"), ("Connection", "close")]
    target = "http://evil.example/_keygate/api/v1/me"
    reply = await fetch(keygate.port, http("GET", target, headers, host="t"))
    assert reply.status == 200
    assert b'"username":"admin"' in reply.body


async def test_query_string_key_is_ignored_by_default_sources(api: AdminApi) -> None:
    reply = await api.call("GET", PREFIX + "/api/v1/me", params={"api_key": api.admin})
    assert reply.status == 401
    assert reply.code == "missing_api_key"


async def test_ready_store_down_is_503_then_recovers(api: AdminApi, keygate: Keygate) -> None:
    reply = await api.call("GET", PREFIX + "/ready")
    assert reply.status == 200
    assert reply.json == {"status": "ok", "checks": {"store": {"status": "ok"}}}
    store = keygate.gw.store
    await store.close()
    try:
        reply = await api.call("GET", PREFIX + "/ready")
        assert reply.status == 503
        assert reply.json["error"]["code"] == "store_unavailable"
        # Which dependency is down, by name (issue 16).
        assert reply.json["checks"]["store"]["status"] == "unavailable"
        assert reply.json["checks"]["store"]["code"] == "store_unavailable"
        assert (await api.call("GET", PREFIX + "/health")).status == 200
    finally:
        await store.open()
    assert (await api.call("GET", PREFIX + "/ready")).status == 200
