"""The OpenAPI 3.1 document of the admin API, built from the route table (admin.routes).

``document`` is the contract served at ``/openapi.json``, which the bundled
Swagger UI (5) renders. ``as_openapi_30`` states the same contract in OpenAPI
3.0.3 form for tools that read 3.0 only, served at ``/docs/openapi-3.0.json``
(docs/reference.md#admin-api): type lists and ``{"type": "null"}``
alternatives become ``nullable``/``oneOf``, ``const`` a one-value ``enum``,
schema ``examples`` one ``example``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from keygate.admin.params import DEFAULT_LIMIT
from keygate.admin.schemas import GROUP_NAME, KEY_ID, QUERY_TEXT, SCHEMAS, USERNAME, Schema, ref
from keygate.gateway.service.keys import LIST_STATUSES, MAX_LIMIT

if TYPE_CHECKING:  # admin.routes imports the docs handlers, which import this module
    from keygate.admin.routes import Endpoint

TITLE = "keygate admin API"
VERSION = "1.0.0"

PATH_PARAMETERS: dict[str, Schema] = {
    "id": {
        "description": "The key id (12 characters [0-9a-z]); any other value is not found.",
        "schema": {"type": "string", "pattern": KEY_ID},
    },
    "delivery_id": {
        "description": "A delivery's id, as the deliveries list gives it.",
        "schema": {"type": "string", "pattern": r"^dlv_[A-Za-z0-9_-]{1,64}$"},
    },
    "username": {"description": "The username.", "schema": {"type": "string", "pattern": USERNAME}},
    "name": {"description": "The group name.", "schema": {"type": "string", "pattern": GROUP_NAME}},
    "asset": {
        "description": "A file name of Swagger UI or of the console.",
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
    },
}

# An empty value is 422 for every parameter but search (docs/admin-api.md).
QUERY_PARAMETERS: dict[str, Schema] = {
    "search": {
        "description": "Case-insensitive substring of name, description or key id; "
        "empty: every key.",
        "schema": {"type": "string", "maxLength": 200, "pattern": QUERY_TEXT},
    },
    "status": {
        "description": "Only keys in this status.",
        "schema": {"type": "string", "enum": list(LIST_STATUSES)},
    },
    "owner": {
        "description": "Only keys of this username.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": QUERY_TEXT},
    },
    "group": {
        "description": "Only keys holding this group.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": QUERY_TEXT},
    },
    "limit": {
        "description": "Page size (an integral decimal such as 50.0 is that integer).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    "cursor": {
        "description": "next_cursor of the previous page of the same list (any other value "
        "is 422).",
        "schema": {"type": "string", "minLength": 1},
    },
    "v": {
        "description": "The image's version, as avatar_url gives it (so a client may cache by "
        "URL); it does not select anything.",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"},
    },
    "target_type": {
        "description": "Only records about this kind of target.",
        "schema": {"type": "string", "enum": ["key", "user", "group"]},
    },
    "target": {
        "description": "Only records about this target: a key id, username or group name.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": QUERY_TEXT},
    },
    "actor": {
        "description": "Only records of changes by this username (cli:<os user> for the CLI).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": QUERY_TEXT},
    },
    "force": {
        "description": "Delete even when users or keys hold the group (it is removed from them).",
        "schema": {"type": "boolean", "default": False},
    },
}

ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "bad_request (not JSON, not an object, wrong Content-Type), bad_path "
        "(a non-canonical path), or ambiguous_api_key (two different keys).",
    ),
    401: ("Unauthorized", "missing_api_key, invalid_api_key, key_disabled or key_expired."),
    403: ("Forbidden", "forbidden: the key's effective groups do not allow this."),
    404: ("NotFound", "not_found (also for another owner's key)."),
    409: ("Conflict", "A conflict with the current state; see the operation for its codes."),
    413: ("TooLarge", "too_large: the body is over 64 KiB (an avatar image: over 1 MiB; "
          "an import's records: over 8 MiB)."),
    415: ("UnsupportedMediaType", "unsupported_media_type: a Content-Encoding keygate "
          "does not decode."),
    422: ("Invalid", "invalid: details name each refused field (unknown fields included)."),
    503: ("Unavailable", "store_unavailable."),
    507: ("InsufficientStorage", "insufficient_storage: the store's disk is full."),
}
# RFC 9110 §11.6.1: every 401 carries a challenge.
CHALLENGE: Schema = {
    "WWW-Authenticate": {
        "description": 'Bearer realm="keygate"',
        "required": True,
        "schema": {"type": "string"},
    }
}

TAGS = [
    {"name": "meta", "description": "Public: probes, this document, Swagger UI."},
    {"name": "me", "description": "The caller (admin or self-service)."},
    {"name": "keys", "description": "Admins: every key. Self-service: the caller's own keys."},
    {"name": "users", "description": "Admin only."},
    {"name": "groups", "description": "Admin only. Built-in groups are read-only."},
    {"name": "audit", "description": "Admin only."},
    {
        "name": "forward-auth",
        "description": "For nginx, Caddy, Traefik and Envoy in front (docs/forward-auth.md).",
    },
]


def security_schemes(sources: Sequence[str]) -> dict[str, Schema]:
    """One scheme per configured credential source (``auth.sources``)."""
    schemes: dict[str, Schema] = {}
    if "x-api-key" in sources:
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    if "authorization" in sources:
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <token>",
        }
    if "basic" in sources:
        schemes["basic"] = {
            "type": "http",
            "scheme": "basic",
            "description": "User name: key id; password: secret and checksum.",
        }
    for source in sources:
        if source.startswith("query:"):
            schemes["queryKey"] = {"type": "apiKey", "in": "query", "name": source[6:]}
    return schemes


def document(
    endpoints: Iterable[Endpoint],
    prefix: str,
    sources: Sequence[str],
    routes: Sequence[str] | None = None,
) -> Schema:
    """The document; ``routes``, when known, are the route names a rule may name."""
    schemes = security_schemes(sources)
    paths: dict[str, dict[str, Schema]] = {}
    for ep in endpoints:
        op = paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
        if ep.optional_key:
            op["security"] = [{}, *({name: []} for name in schemes)]
    paths.update(copy.deepcopy(FORWARD_AUTH_PATHS))
    schemas = copy.deepcopy(SCHEMAS)
    if routes is not None:
        schemas["Rule"]["properties"]["route"]["enum"] = ["*", *routes]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Manage keygate keys, users, groups and the audit trail. "
            "Every endpoint except the meta ones needs a key whose groups "
            "include admin or self-service.",
        },
        "servers": [{"url": prefix}],
        "tags": TAGS,
        "security": [{name: []} for name in schemes],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                name: {
                    "description": text,
                    "content": {"application/json": {"schema": ref("Error")}},
                    **({"headers": copy.deepcopy(CHALLENGE)} if status == 401 else {}),
                }
                for status, (name, text) in ERRORS.items()
            },
            "securitySchemes": schemes,
        },
    }


def _forward_auth(operation_id: str, summary: str, tail: bool) -> Schema:
    """Forward-auth (docs/forward-auth.md): served next to the admin API, any method."""
    identity = {
        name: {"description": text, "schema": {"type": "string"}}
        for name, text in (
            ("X-Keygate-Key-Id", "The key's id (empty on a public route)."),
            ("X-Keygate-Key-Name", "The key's name (empty on a public route)."),
            ("X-Keygate-User", "The key owner's username (empty on a public route)."),
            ("X-Keygate-Groups", "The key's effective groups, comma-separated, sorted."),
            ("Cache-Control", "Always no-store."),
        )
    }
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "description": "May the request named by X-Forwarded-Method/-Uri (Traefik, Caddy), "
        "X-Original-Method/-URI (nginx) or the path after /auth (Envoy) pass? Any method. "
        "Only peers in server.trusted_proxies are believed (else 403 untrusted_proxy); "
        "off unless [forward_auth] enabled = true (404). Refusals are proxy mode's "
        "(docs/forward-auth.md); with nginx_compat a 4xx other than 401 is 403 with "
        "X-Keygate-Error.",
        "tags": ["forward-auth"],
        "security": [{}],
        "parameters": [
            {"name": "X-Forwarded-Method", "in": "header", "schema": {"type": "string"}},
            {"name": "X-Forwarded-Uri", "in": "header", "schema": {"type": "string"}},
            {"name": "X-Original-Method", "in": "header", "schema": {"type": "string"}},
            {"name": "X-Original-URI", "in": "header", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "Allowed: no body.", "headers": identity},
            **{
                str(status): {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
                for status in (400, 401, 403, 404, 503)
            },
            "429": _error("rate_limited or quota_exceeded, with Retry-After (not with "
                          "nginx_compat: 403)."),
        },
    }
    if tail:
        op["parameters"].insert(
            0,
            {
                "name": "tail",
                "in": "path",
                "required": True,
                "description": "The original path (Envoy ext_authz path_prefix).",
                "schema": {"type": "string"},
            },
        )
    return op


def _operation(ep: Endpoint) -> Schema:
    op: Schema = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "tags": [ep.tag],
        "responses": {str(ep.ok): _success(ep)},
    }
    if ep.admin_only:
        op["description"] = "Admin only."
    parameters = [
        {"name": name, "in": "path", "required": True, **PATH_PARAMETERS[name]}
        for name in _path_names(ep.path)
    ] + [{"name": name, "in": "query", **QUERY_PARAMETERS[name]} for name in ep.query]
    if parameters:
        op["parameters"] = parameters
    if ep.body is not None:
        op["requestBody"] = {
            "required": ep.body_required,
            "content": {"application/json": {"schema": ref(ep.body)}},
        }
    if ep.upload:
        op["requestBody"] = upload_body()
    if ep.public:
        op["security"] = []
    if ep.media == "text/plain":
        op["responses"][str(ep.ok)] = {
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    for status in statuses(ep):
        if status == 304:
            op["responses"]["304"] = {
                "description": "If-None-Match names the current ETag: no body.",
                "headers": {"ETag": ETAG_HEADER},
            }
            continue
        name, _ = ERRORS[status]
        response: Schema = {"$ref": f"#/components/responses/{name}"}
        if status == 409:
            response = _error("Conflict: " + ", ".join(ep.conflicts) + ".")
        elif status == 403 and (ep.admin_only or ep.forbidden):
            reasons = ["the key's effective groups do not allow this"]
            if ep.admin_only:
                reasons = ["the key's effective groups lack admin (admin only)"]
            if ep.forbidden:
                reasons.append(ep.forbidden)
            response = _error("forbidden: " + "; or ".join(reasons) + ".")
        op["responses"][str(status)] = response
    return op


IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/octet-stream")
ETAG_HEADER: Schema = {
    "description": "The image's entity tag (RFC 9110 §8.8.3).",
    "schema": {"type": "string"},
}


def upload_body() -> Schema:
    """An image as the whole body, or as the ``file`` part of a form."""
    binary: Schema = {"type": "string", "format": "binary"}
    content: Schema = {media: {"schema": binary} for media in IMAGE_TYPES}
    content["multipart/form-data"] = {
        "schema": {
            "type": "object",
            "properties": {"file": binary},
            "required": ["file"],
            "additionalProperties": False,
        }
    }
    return {
        "required": True,
        "description": "PNG, JPEG, GIF or WebP, at most 1 MiB. Anything else (SVG, HTML, "
        "damaged or truncated images, polyglots, more than 4096×4096 pixels) is 422.",
        "content": content,
    }


def statuses(ep: Endpoint) -> list[int]:
    """Every status the operation can answer besides success (and 405 for another method)."""
    found = [400]  # bad_path on any path; bad_request and ambiguous_api_key below
    if not ep.public or ep.optional_key:
        found += [401, 403]
    if ep.not_found:
        found.append(404)
    if ep.conflicts:
        found.append(409)
    if ep.etag:
        found.append(304)
    if ep.body is not None or ep.upload:
        found.append(413)
    if ep.upload:
        found.append(415)
    if ep.body is not None or ep.query or ep.upload:
        found.append(422)
    if not ep.public or ep.operation_id == "ready":
        found.append(503)
    if not ep.public and ep.method != "GET":
        found.append(507)  # a change the store had no space to record
    return found


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def _success(ep: Endpoint) -> Schema:
    if ep.ok == 204:
        return {"description": "Done; no body."}
    if ep.ok == 308:
        return {
            "description": "Permanent redirect (RFC 9110 §15.4.9).",
            "headers": {"Location": {"description": "Where to go.", "schema": {"type": "string"}}},
        }
    if ep.response is not None:
        return {"description": "OK", "content": {"application/json": {"schema": ref(ep.response)}}}
    if ep.media == "application/json":
        return {
            "description": "An OpenAPI document.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    if ep.etag:
        return {
            "description": "The image.",
            "headers": {"ETag": ETAG_HEADER},
            "content": {ep.media: {"schema": {"type": "string", "format": "binary"}}},
        }
    if ep.media == "text/html":
        return {
            "description": "An HTML page.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    return {
        "description": "A file.",
        "content": {ep.media: {"schema": {"type": "string", "format": "binary"}}},
    }


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


# --- 3.1 → 3.0, for tools that read 3.0 only ------------------------------------------
def as_openapi_30(doc: Schema) -> Schema:
    out = copy.deepcopy(doc)
    out["openapi"] = "3.0.3"
    _walk(out)
    return out


def _walk(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                _schema_30(value)
            elif key == "schemas" and isinstance(value, dict):
                for schema in value.values():
                    _schema_30(schema)
            else:
                _walk(value)
    elif isinstance(node, list):
        for item in node:
            _walk(item)


def _schema_30(schema: Schema) -> None:
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    for key in ("anyOf", "oneOf"):
        # {"type": "null"} among alternatives: 3.0 says nullable instead.
        options = schema.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            schema[key] = [o for o in options if o != {"type": "null"}]
            schema["nullable"] = True
    types = schema.get("type")
    if isinstance(types, list):
        concrete = [t for t in types if t != "null"]
        if len(concrete) < len(types):
            schema["nullable"] = True
        if len(concrete) == 1:
            schema["type"] = concrete[0]
        else:
            del schema["type"]
            schema["oneOf"] = [{"type": t} for t in concrete]
    examples = schema.pop("examples", None)
    if isinstance(examples, list) and examples:
        schema["example"] = examples[0]
    for key in ("properties",):
        for child in schema.get(key, {}).values():
            _schema_30(child)
    for key in ("items", "additionalProperties", "not"):
        child = schema.get(key)
        if isinstance(child, dict):
            _schema_30(child)
    for key in ("oneOf", "anyOf", "allOf"):
        for child in schema.get(key, []):
            _schema_30(child)


FORWARD_AUTH_PATHS: Final[dict[str, dict[str, Schema]]] = {
    "/auth": {"get": _forward_auth("forwardAuth", "Forward-auth: may this request pass?", False)},
    "/auth/{tail}": {
        "get": _forward_auth("forwardAuthPath", "Forward-auth with the path after /auth", True)
    },
}
