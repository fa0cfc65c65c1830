"""Re-routing headers and encoded control characters (docs/security.md).

Frameworks and proxies behind keygate read ``X-Original-URL`` and kin as the
path to serve instead of the request line's; keygate checked the request
line's, so these never reach an upstream unless a route keeps them. A path
carrying an encoded control character is refused as ``bad_path`` by both
front ends alike (it once reached the upstream through one and was a 404 on
the other).
"""

from __future__ import annotations

import pytest

from keygate.config.settings import Route
from tests.support.gateway import RigFactory
from tests.support.raw import bearer, http
from tests.support.upstreams import Recorder

FRONT_ENDS = pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
REROUTING = [
    "X-Original-URL",
    "X-Original-URI",
    "X-Rewrite-URL",
    "X-Forwarded-Uri",
    "X-Forwarded-Path",
    "X-Envoy-Original-Path",
    "X-HTTP-Path-Override",
]
SPELLINGS = [*REROUTING, "x-original-uri", "X_Original_URL", "X_FORWARDED_URI"]


@FRONT_ENDS
@pytest.mark.parametrize("name", SPELLINGS)
async def test_rerouting_headers_never_reach_the_upstream(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, name: str
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path})
    token = await rig.key()
    reply = await rig.exchange(http("GET", "/public", [bearer(token), (name, "/admin/delete")]))
    assert reply.status == 200
    names = {k.lower().replace("_", "-") for k, _ in recorder.last().headers}
    assert names.isdisjoint(h.lower() for h in REROUTING)


@FRONT_ENDS
async def test_a_route_may_keep_rerouting_headers(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    routes = (
        Route(name="default", prefix="/", upstream=recorder.url, strip_rerouting_headers=False),
    )
    rig = await rig_factory(routes=routes, server={"fast_path": fast_path})
    token = await rig.key()
    headers = [bearer(token), *((name, "/kept") for name in REROUTING)]
    reply = await rig.exchange(http("GET", "/public", headers))
    assert reply.status == 200
    seen = recorder.last()
    for name in REROUTING:
        assert seen.values(name) == ["/kept"], name
    # The identity and forwarded headers stay keygate's either way.
    assert seen.values("X-Keygate-User") == ["admin"]


@FRONT_ENDS
@pytest.mark.parametrize(
    "target",
    [
        "/a%0Ab",
        "/a%0aGET%20/admin",
        "/a%0D%0AX-Injected:%201",
        "/a%09b",
        "/a%1Fb",
        "/a%7Fb",
        "/a%7fb",
        "/%0A",
        "/a/%0D/b",
    ],
)
async def test_encoded_control_characters_are_bad_paths(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, target: str
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path})
    token = await rig.key()
    reply = await rig.exchange(http("GET", target, [bearer(token)]))
    assert (reply.status, reply.code) == (400, "bad_path")
    assert recorder.seen == []


# --- the second review ------------------------------------------------------------------
SECOND_REVIEW_NAMES = [
    "X-Script-Name",
    "X-Forwarded-Script-Name",
    "X-Original-Path",
    "X-Forwarded-Url",
    "X-Override-URL",
    "X-Original-Host",
    "X-Host",
    "X-HTTP-Host-Override",
    "Remote-User",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Goog-Authenticated-User-Email",
    "X-MS-Client-Principal-Name",
]


@FRONT_ENDS
@pytest.mark.parametrize("name", SECOND_REVIEW_NAMES)
async def test_more_rerouting_and_identity_names_never_reach_the_upstream(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, name: str
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path})
    token = await rig.key()
    reply = await rig.exchange(http("GET", "/public", [bearer(token), (name, "/admin")]))
    assert reply.status == 200
    assert recorder.last().values(name) == []


@FRONT_ENDS
@pytest.mark.parametrize(
    "name", ["SCRIPT_NAME", "script_name", "Script_Name", "PATH_INFO", "REMOTE_USER", "X_Custom"]
)
async def test_underscore_names_are_dropped_as_nginx_drops_them(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, name: str
) -> None:
    # gunicorn believes a SCRIPT_NAME header from 127.0.0.1 and serves the
    # path after it: keygate checked /flask/public/..., Flask served /flask/private/...
    rig = await rig_factory(server={"fast_path": fast_path})
    token = await rig.key()
    headers = [bearer(token), (name, "/flask/public")]
    reply = await rig.exchange(http("GET", "/flask/public/flask/private/secret", headers))
    assert reply.status == 200
    assert [k for k, _ in recorder.last().headers if "_" in k] == []


@FRONT_ENDS
async def test_a_route_may_forward_underscore_names_but_never_keygate_s_own(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    routes = (
        Route(name="default", prefix="/", upstream=recorder.url, underscores_in_headers=True),
    )
    rig = await rig_factory(routes=routes, server={"fast_path": fast_path})
    token = await rig.key()
    headers = [
        bearer(token),
        ("X_Custom", "kept"),
        ("SCRIPT_NAME", "/x"),
        ("X_Keygate_User", "root"),
        ("X_Forwarded_For", "10.9.9.9"),
        ("Remote_User", "root"),
    ]
    reply = await rig.exchange(http("GET", "/public", headers))
    assert reply.status == 200
    underscored = [(k, v) for k, v in recorder.last().headers if "_" in k]
    assert underscored == [("X_Custom", "kept")]


# --- round two: whole families of identity headers, other gateways' too -------------
@FRONT_ENDS
@pytest.mark.parametrize(
    "name",
    [
        "X-Consumer-Username",
        "X-Consumer-ID",
        "X-Credential-Identifier",
        "X-Anonymous-Consumer",
        "Remote-Groups",
        "Remote-Email",
        "Remote-Name",
        "X-Forwarded-Client-Cert",
        "X-SSL-Client-S-DN",
        "X-SSL-Client-Verify",
        "Cf-Access-Authenticated-User-Email",
        "X-Pomerium-Claim-Email",
        "X-Authentik-Username",
        "X-Apigateway-Api-Userinfo",
        "X-Endpoint-API-UserInfo",
        "X-Forwarded-Protocol",
    ],
)
async def test_round_two_identity_families_never_reach_the_upstream(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, name: str
) -> None:
    rig = await rig_factory(server={"fast_path": fast_path})
    token = await rig.key()
    reply = await rig.exchange(http("GET", "/public", [bearer(token), (name, "admin")]))
    assert reply.status == 200
    assert recorder.last().values(name) == []
