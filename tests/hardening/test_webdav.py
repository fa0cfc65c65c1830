"""WebDAV's second target (docs/security.md, "WebDAV"): the Destination of COPY and MOVE.

A key allowed COPY and MOVE under ``/public/**`` must not copy or move a file
into ``/admin/...`` by naming it in ``Destination``: the path there is
normalised like the request path, must be on this host and route, must be
allowed for the key and the method, and reaches the upstream exactly as
checked (rewritten onto the upstream's own host and prefix).
"""

from __future__ import annotations

import pytest

from keygate.config.settings import Route
from tests.support.gateway import Rig, RigFactory
from tests.support.raw import bearer, http
from tests.support.upstreams import Recorder

FRONT_ENDS = pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
PUBLIC_DAV = [{"route": "*", "methods": ["GET", "COPY", "MOVE"], "paths": ["/public/**"]}]


async def _rig(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, **route: object
) -> tuple[Rig, str]:
    routes = (
        Route(name="dav", prefix="/", upstream=recorder.url, **route),  # type: ignore[arg-type]
    )
    rig = await rig_factory(routes=routes, server={"fast_path": fast_path})
    actor = await rig.kg.admin_actor()
    await rig.kg.services.groups.create(actor, {"name": "dav", "rules": PUBLIC_DAV})
    return rig, await rig.key(["dav"])


@FRONT_ENDS
@pytest.mark.parametrize("method", ["COPY", "MOVE"])
@pytest.mark.parametrize(
    "destination",
    [
        "/admin/secret",
        "http://keygate.test/admin/secret",
        "HTTP://KEYGATE.TEST:80/admin/secret",
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/./../admin/x",
        "/PUBLIC/x",  # paths are case-sensitive: not under /public
    ],
)
async def test_a_destination_outside_the_keys_paths_is_forbidden(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, method: str, destination: str
) -> None:
    rig, token = await _rig(rig_factory, recorder, fast_path)
    headers = [bearer(token), ("Destination", destination)]
    reply = await rig.exchange(http(method, "/public/file.txt", headers))
    assert (reply.status, reply.code) == (403, "forbidden")
    assert recorder.seen == []


@FRONT_ENDS
@pytest.mark.parametrize(
    ("destination", "code"),
    [
        ("http://evil.example/public/x", "bad_destination"),
        ("http://keygate.test:8080/public/x", "bad_destination"),
        ("//keygate.test/public/x", "bad_destination"),
        ("ftp://keygate.test/public/x", "bad_destination"),
        ("http://user@keygate.test/public/x", "bad_destination"),
        ("/public/x?y=1", "bad_destination"),
        ("public/x", "bad_destination"),
        ("", "bad_destination"),
        ("/public/a%2Fb", "bad_path"),
        ("/public/a%00b", "bad_path"),
        ("/../x", "bad_path"),
        # A port yarl cannot read (it once raised on first use: a 500).
        ("http://keygate.test:1x/public/x", "bad_destination"),
        ("http://keygate.test:-1/public/x", "bad_destination"),
        ("http://keygate.test:99999999999/x", "bad_destination"),
        ("http://keygate.test:80dav/public/x", "bad_destination"),
    ],
)
async def test_a_destination_that_is_not_a_path_here_is_a_bad_request(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool, destination: str, code: str
) -> None:
    rig, token = await _rig(rig_factory, recorder, fast_path)
    headers = [bearer(token), ("Destination", destination)]
    reply = await rig.exchange(http("MOVE", "/public/file.txt", headers))
    assert (reply.status, reply.code) == (400, code)
    assert recorder.seen == []


@FRONT_ENDS
async def test_two_destinations_are_a_bad_request(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    rig, token = await _rig(rig_factory, recorder, fast_path)
    headers = [bearer(token), ("Destination", "/public/a"), ("Destination", "/admin/a")]
    reply = await rig.exchange(http("COPY", "/public/file.txt", headers))
    assert (reply.status, reply.code) == (400, "bad_destination")
    assert recorder.seen == []


@FRONT_ENDS
@pytest.mark.parametrize(
    ("destination", "upstream"),
    [
        ("/public/copy.txt", "/public/copy.txt"),
        ("/public/a/../b/./c.txt", "/public/b/c.txt"),
        ("/public/%7Euser", "/public/~user"),
        ("http://keygate.test/public/c.txt", "http://{up}/public/c.txt"),
        ("https://keygate.test/public/c.txt", "http://{up}/public/c.txt"),
    ],
)
async def test_an_allowed_destination_reaches_the_upstream_as_checked(
    rig_factory: RigFactory,
    recorder: Recorder,
    fast_path: bool,
    destination: str,
    upstream: str,
) -> None:
    rig, token = await _rig(rig_factory, recorder, fast_path)
    headers = [bearer(token), ("Destination", destination), ("Overwrite", "F")]
    reply = await rig.exchange(http("COPY", "/public/file.txt", headers))
    assert reply.status == 200
    seen = recorder.last()
    assert (seen.method, seen.path) == ("COPY", "/public/file.txt")
    host = recorder.url.removeprefix("http://")
    assert seen.values("Destination") == [upstream.format(up=host)]
    assert seen.values("Overwrite") == ["F"]


async def test_destination_follows_strip_prefix_and_the_upstream_base(
    rig_factory: RigFactory, recorder: Recorder
) -> None:
    routes = (
        Route(name="dav", prefix="/dav", upstream=recorder.url + "/base", strip_prefix=True),
    )
    rig = await rig_factory(routes=routes)
    actor = await rig.kg.admin_actor()
    rules = [{"route": "dav", "methods": ["MOVE"], "paths": ["/dav/public/**"]}]
    await rig.kg.services.groups.create(actor, {"name": "dav", "rules": rules})
    token = await rig.key(["dav"])
    for destination, upstream in (
        ("/dav/public/b", "/base/public/b"),
        ("http://keygate.test/dav/public/b", f"{recorder.url}/base/public/b"),
    ):
        headers = [bearer(token), ("Destination", destination)]
        reply = await rig.exchange(http("MOVE", "/dav/public/a", headers))
        assert reply.status == 200
        assert recorder.last().path == "/base/public/a"
        assert recorder.last().values("Destination") == [upstream]
    # Outside the route: another route (or none) could be another upstream.
    headers = [bearer(token), ("Destination", "/elsewhere/b")]
    reply = await rig.exchange(http("MOVE", "/dav/public/a", headers))
    assert (reply.status, reply.code) == (400, "bad_destination")


@FRONT_ENDS
async def test_a_destination_on_a_public_route_is_still_normalised(
    rig_factory: RigFactory, recorder: Recorder, fast_path: bool
) -> None:
    routes = (Route(name="open", prefix="/", upstream=recorder.url, public=True),)
    rig = await rig_factory(routes=routes, server={"fast_path": fast_path})
    headers = [("Destination", "/a/../b")]
    reply = await rig.exchange(http("MOVE", "/x", headers))
    assert reply.status == 200
    assert recorder.last().values("Destination") == ["/b"]
    reply = await rig.exchange(http("MOVE", "/x", [("Destination", "http://evil/b")]))
    assert reply.status == 400
