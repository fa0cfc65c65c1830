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
