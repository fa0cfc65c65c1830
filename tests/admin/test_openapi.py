"""The OpenAPI document, the route table it is built from, and Swagger UI assets."""

from __future__ import annotations

import re
from typing import Any, cast

import msgspec
import pytest
from aiohttp import web
from aiohttp.web_urldispatcher import PrefixedSubAppResource
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from keygate.admin.openapi import as_openapi_30, document, security_schemes
from keygate.admin.routes import ENDPOINTS
from keygate.config.declare import declared
from keygate.gateway.service import bodies
from tests.support.admin import PREFIX, AdminApi, Member
from tests.support.gateway import Keygate
from tests.support.raw import fetch, http

DOC_URN = "urn:keygate-admin"


async def fetch_doc(api: AdminApi, path: str = "/openapi.json") -> dict[str, Any]:
    reply = await api.call("GET", PREFIX + path)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    return cast(dict[str, Any], reply.json)


def admin_subapp(kg: Keygate) -> web.Application:
    assert kg.client.app is not None
    for resource in kg.client.app.router.resources():
        if isinstance(resource, PrefixedSubAppResource):
            return resource.get_info()["app"]
    raise AssertionError("admin sub-app not mounted")


def schema_validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    registry = Registry().with_resource(
        DOC_URN, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    return Draft202012Validator(
        {"$ref": f"{DOC_URN}#/components/schemas/{name}"}, registry=registry
    )


async def test_openapi_document_is_valid_3_1(api: AdminApi) -> None:
    doc = await fetch_doc(api)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


async def test_openapi_30_view_is_valid_3_0_without_type_lists(api: AdminApi) -> None:
    doc = await fetch_doc(api, "/docs/openapi-3.0.json")
    assert doc["openapi"].startswith("3.0.")
    validate(doc)
    assert not re.search(
        r'"type":\[', (await api.call("GET", PREFIX + "/docs/openapi-3.0.json")).raw.decode()
    )


async def test_openapi_every_registered_route_is_documented(
    api: AdminApi, keygate: Keygate
) -> None:
    doc = await fetch_doc(api)
    registered = set()
    for route in admin_subapp(keygate).router.routes():
        if route.method == "*":
            continue  # a fixed path's 405 for other methods (admin.routes.register)
        path = route.resource.canonical  # type: ignore[union-attr]
        assert path.startswith(PREFIX)
        registered.add((route.method.lower(), path[len(PREFIX) :]))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    # Forward-auth is served by the gateway app next to the sub-app (any method).
    assert registered | {("get", "/auth"), ("get", "/auth/{tail}")} == documented
    assert len(registered) == len(ENDPOINTS)


async def test_openapi_fixed_path_beside_a_templated_one_answers_405(api: AdminApi) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        reply = await api.call(method, "/keys/import", api.admin)
        assert (reply.status, reply.code) == (405, "method_not_allowed"), method
        assert reply.headers["Allow"] == "POST"


async def test_openapi_servers_point_at_admin_prefix(api: AdminApi) -> None:
    assert (await fetch_doc(api))["servers"] == [{"url": PREFIX}]


async def test_openapi_security_applies_to_every_private_operation(api: AdminApi) -> None:
    doc = await fetch_doc(api)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearer"]["type"] == "http"
    assert schemes["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"apiKey": []}, {"bearer": []}]
    public = {ep.path for ep in ENDPOINTS if ep.public and not ep.optional_key}
    optional = {ep.path for ep in ENDPOINTS if ep.optional_key} | {"/auth", "/auth/{tail}"}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path in optional:
                assert {} in op["security"]  # a key only from some addresses
            elif path in public:
                assert op["security"] == []
            else:
                assert "security" not in op  # the document-wide requirement applies
                assert {"401", "403"} <= set(op["responses"])


async def test_openapi_every_operation_lists_its_errors(api: AdminApi) -> None:
    doc = await fetch_doc(api)
    for ep in ENDPOINTS:
        responses = doc["paths"][ep.path][ep.method.lower()]["responses"]
        assert str(ep.ok) in responses
        if ep.body is not None:
            assert {"400", "413", "422"} <= set(responses)
            assert "requestBody" in doc["paths"][ep.path][ep.method.lower()]
        if ep.conflicts:
            assert all(code in responses["409"]["description"] for code in ep.conflicts)
        if ep.not_found:
            assert "404" in responses


def test_security_schemes_follow_configured_sources() -> None:
    schemes = security_schemes(["basic", "query:api_key"])
    assert schemes == {
        "basic": {
            "type": "http",
            "scheme": "basic",
            "description": "User name: key id; password: secret and checksum.",
        },
        "queryKey": {"type": "apiKey", "in": "query", "name": "api_key"},
    }


def test_document_and_30_view_validate_for_other_prefix() -> None:
    doc = document(ENDPOINTS, "/admin", ["authorization"])
    validate(doc)
    validate(as_openapi_30(doc))
    assert doc["security"] == [{"bearer": []}]


@pytest.mark.parametrize("name", ["Error", "Key", "IssuedKey", "User", "Group", "AuditRecord"])
async def test_openapi_component_schemas_are_valid_json_schema(api: AdminApi, name: str) -> None:
    doc = await fetch_doc(api)
    Draft202012Validator.check_schema(doc["components"]["schemas"][name])


async def test_openapi_schemas_match_real_responses(api: AdminApi, alice: Member) -> None:
    doc = await fetch_doc(api)
    samples: list[tuple[str, Any]] = []
    created = await api.post(
        "/keys",
        api.admin,
        {
            "groups": ["default"],
            "expires_in": 60,
            "webhook_url": "https://h.example/",
            "metadata": {"a": 1},
        },
    )
    samples.append(("IssuedKey", created.json))
    kid = created.json["key"]["id"]
    samples.append(("IssuedKey", (await api.post(f"/keys/{kid}/roll", api.admin)).json))
    samples.append(("Key", (await api.patch(f"/keys/{kid}", api.admin, {"name": "n"})).json))
    samples.append(("Key", (await api.post(f"/keys/{kid}/revoke", api.admin)).json))
    samples.append(("KeyList", (await api.get("/keys", api.admin, params={"limit": "1"})).json))
    samples.append(("Me", (await api.get("/me", alice.token)).json))
    samples.append(("User", (await api.get("/users/alice", api.admin)).json))
    samples.append(("UserList", (await api.get("/users", api.admin)).json))
    rule = {"route": "*", "methods": ["GET"], "paths": ["/**"]}
    samples.append(
        ("Group", (await api.post("/groups", api.admin, {"name": "g", "rules": [rule]})).json)
    )
    samples.append(("GroupList", (await api.get("/groups", api.admin)).json))
    samples.append(("AuditList", (await api.get("/audit", api.admin, params={"limit": "3"})).json))
    samples.append(("Health", (await api.call("GET", PREFIX + "/ready")).json))
    samples.append(("Error", (await api.get("/me", "nonsense")).json))
    samples.append(("Error", (await api.post("/keys", api.admin, {"x": 1})).json))
    for name, body in samples:
        errors = list(schema_validator(doc, name).iter_errors(body))
        assert errors == [], (name, [e.message for e in errors])


async def test_openapi_request_schemas_refuse_unknown_fields(api: AdminApi) -> None:
    doc = await fetch_doc(api)
    for name in (
        "KeyCreate",
        "KeyPatch",
        "RollRequest",
        "UserCreate",
        "UserPatch",
        "GroupCreate",
        "GroupPatch",
    ):
        assert not schema_validator(doc, name).is_valid({"groups": [], "unknown_field": 1})


async def test_docs_page_is_html_using_local_assets(api: AdminApi) -> None:
    reply = await api.call("GET", PREFIX + "/docs")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    page = reply.raw.decode()
    assert "swagger-ui" in page
    assert "http://" not in page and "https://" not in page  # no CDN
    assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(urls) >= 5
    for url in urls:
        asset = await api.call("GET", url)
        assert asset.status == 200, url
        assert len(asset.raw) > 0


async def test_docs_page_points_at_a_document_swagger_ui_renders(api: AdminApi) -> None:
    page = (await api.call("GET", PREFIX + "/docs")).raw.decode()
    spec_url = re.search(r'data-spec-url="([^"]+)"', page)
    assert spec_url is not None
    doc = (await api.call("GET", spec_url.group(1))).json
    assert doc["openapi"].startswith("3.1.")
    init = (await api.call("GET", PREFIX + "/docs/static/keygate-init.js")).raw.decode()
    assert "persistAuthorization: true" in init
    assert "validatorUrl: null" in init  # no call to a public validator


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon-32x32.png", "image/png"),
    ],
)
async def test_docs_static_asset_has_its_content_type(
    api: AdminApi, name: str, content_type: str
) -> None:
    reply = await api.call("GET", f"{PREFIX}/docs/static/{name}")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith(content_type)


@pytest.mark.parametrize(
    "name", ["index.html", "swagger-initializer.js", "__init__.py", "swagger-ui.js.map"]
)
async def test_docs_static_unlisted_file_is_404(api: AdminApi, name: str) -> None:
    reply = await api.call("GET", f"{PREFIX}/docs/static/{name}")
    assert reply.status == 404
    assert reply.code == "not_found"


# --- every status an operation can answer is documented ---------------------------
def documented(doc: dict[str, Any], method: str, path: str) -> set[int]:
    return {int(s) for s in doc["paths"][path][method.lower()]["responses"]}


async def test_openapi_statuses_follow_the_rules_for_each_operation(api: AdminApi) -> None:
    doc = await fetch_doc(api)
    for ep in ENDPOINTS:
        codes = documented(doc, ep.method, ep.path)
        assert ep.ok in codes and 400 in codes, ep.operation_id
        if not ep.public:
            assert {401, 403, 503} <= codes, ep.operation_id
        if ep.body is not None:
            assert {400, 413, 422} <= codes, ep.operation_id
        if ep.query:
            assert 422 in codes, ep.operation_id
        if "{" in ep.path:
            assert 404 in codes, ep.operation_id
        if ep.admin_only:
            op = doc["paths"][ep.path][ep.method.lower()]
            assert "admin only" in op["responses"]["403"]["description"]


async def test_openapi_401_declares_its_challenge_header(api: AdminApi) -> None:
    doc = await fetch_doc(api)
    unauthorized = doc["components"]["responses"]["Unauthorized"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
    reply = await api.get("/me", "nonsense")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"]


async def test_openapi_update_key_403_names_the_block_rules(api: AdminApi) -> None:
    doc = await fetch_doc(api)
    text = doc["paths"]["/api/v1/keys/{id}"]["patch"]["responses"]["403"]["description"]
    assert "admin disabled" in text and "expiry an admin set" in text
    disabled_by = doc["components"]["schemas"]["Key"]["properties"]["disabled_by"]
    assert disabled_by["type"] == ["object", "null"]
    assert "disabled_by" in doc["components"]["schemas"]["Key"]["required"]


def sample_path(path: str, key_id: str) -> str:
    values = {"id": key_id, "username": "admin", "name": "default", "asset": "swagger-ui.css"}
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def test_openapi_documents_the_statuses_operations_really_answer(
    api: AdminApi, keygate: Keygate, plain_token: str
) -> None:
    """Drive every operation into each error it can meet; the answer must be documented."""
    doc = await fetch_doc(api)
    key_id = plain_token.split("_")[1]
    big = b'{"description": "' + b"x" * 70000 + b'"}'
    for ep in ENDPOINTS:
        codes = documented(doc, ep.method, ep.path)
        path = PREFIX + sample_path(ep.path, key_id)
        answers: list[int] = []
        if not ep.public:
            answers.append((await api.call(ep.method, path)).status)  # no key
            answers.append((await api.call(ep.method, path, plain_token)).status)  # no role
            two = {"X-API-Key": plain_token}
            answers.append((await api.call(ep.method, path, api.admin, headers=two)).status)
        dotted = PREFIX + "/." + path[len(PREFIX) :]
        request = http(ep.method, dotted, [("Connection", "close")], host="t")
        status = (await fetch(keygate.port, request)).status
        assert status == 400, (ep.operation_id, status)  # bad_path
        answers.append(status)
        if ep.body is not None:
            json_type = {"Content-Type": "application/json"}
            for data in (big, b"{", b"null", b'{"unknown_field": 1}'):
                reply = await api.call(ep.method, path, api.admin, headers=json_type, data=data)
                answers.append(reply.status)
        if ep.query:
            reply = await api.call(ep.method, path, api.admin, params={ep.query[0]: ""})
            answers.append(reply.status)
        for status in answers:
            assert status in codes, (ep.operation_id, status, sorted(codes))


# --- request bodies: generated from their declarations ------------------------------
def test_openapi_request_bodies_are_the_declared_bodies() -> None:
    doc = document(ENDPOINTS, PREFIX, ["authorization"])
    schemas = doc["components"]["schemas"]
    assert {ep.body for ep in ENDPOINTS if ep.body} == {b.__name__ for b in bodies.BODIES}
    for body in bodies.BODIES:
        assert set(schemas[body.__name__]["properties"]) == set(body.__struct_fields__)
    assert schemas["KeyCreate"]["properties"]["name"] == msgspec.json.schema(bodies.KeyName)
    assert schemas["Key"]["properties"]["name"] == schemas["KeyPatch"]["properties"]["name"]


ODD_VALUES: list[Any] = [
    None, True, 0, -1, 5, 5.0, 1.5, 2**63, float("inf"), "", " ", "x" * 101, "x" * 1001,
    "\u0000", "\u202e", "a\n", "a\tb", " a", "abc", "Abc", "a" * 65, "7d", "7x", "0",
    "99999999999w", "2999-01-01T00:00:00Z", "https://h.example/x", "ftp://x", "admin",
    "active", "revoked", "alice", "bad name!", [], [1], ["default"], ["Bad"], ["x"] * 101,
    {}, {"a": 1}, [{"route": "*", "methods": ["GET"], "paths": ["/**"]}], [5],
]  # fmt: skip
BASE: dict[str, dict[str, Any]] = {
    "KeyCreate": {"groups": ["default"]},
    "UserCreate": {"username": "u"},
    "GroupCreate": {"name": "g"},
}
# Checked after decoding: the rules by gateway.auth.policy, which knows the
# routes, an import's records by the import rules (each named records[i]);
# the rest by checks the schema cannot state (a URL's host, a size, a zone).
SERVICE_CHECKED = {"rules", "records"}


@pytest.mark.parametrize("body", bodies.BODIES, ids=lambda b: b.__name__)
def test_openapi_request_schema_accepts_what_decoding_accepts(body: type[bodies.Body]) -> None:
    doc = document(ENDPOINTS, PREFIX, ["authorization"])
    validator = schema_validator(doc, body.__name__)
    base = BASE.get(body.__name__, {})
    checked = {name for name, field in declared(body).items() if field.check is not None}
    for field in (*body.__struct_fields__, "unknown_field"):
        for value in ODD_VALUES:
            sample = {**base, field: value}
            _, errors = bodies.decode(body, sample)
            in_schema = validator.is_valid(sample)
            if not errors and field not in SERVICE_CHECKED:
                assert in_schema, (body.__name__, sample)
            if in_schema and field not in checked:
                assert not errors, (body.__name__, sample, errors)
