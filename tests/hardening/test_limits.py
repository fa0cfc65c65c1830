"""Limits and time (OWASP API4): every resource a client can hold has a bound."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from keygate.config.settings import Route
from tests.support.gateway import Rig, RigFactory
from tests.support.polling import wait_for
from tests.support.raw import bearer, http
from tests.support.upstreams import MIB, Recorder


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --- header-read deadline (slowloris) -----------------------------------------------


@pytest.mark.brisk
async def test_limits_half_sent_head_is_closed_within_header_timeout(
    rig: Rig, token: str
) -> None:
    step = rig.settings.server.header_timeout / 5
    conn = await rig.raw()
    start = time.monotonic()
    try:
        await conn.send(b"GET /slow HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer ")
        # Trickle one byte every fifth of the timeout: progress must not extend the deadline.
        closed = False
        for ch in token:
            if conn.reader.at_eof():
                closed = True
                break
            try:
                await conn.send(ch.encode())
            except ConnectionError:
                closed = True
                break
            if await conn.closed_within(step):
                closed = True
                break
        assert closed
    finally:
        await conn.close()
    elapsed = time.monotonic() - start
    assert elapsed < rig.settings.server.header_timeout + 1.0, elapsed
    assert rig.up.seen == []


@pytest.mark.brisk
async def test_limits_silent_connection_is_closed_within_header_timeout(rig: Rig) -> None:
    conn = await rig.raw()
    start = time.monotonic()
    try:
        assert await conn.closed_within(rig.settings.server.header_timeout + 1.0)
    finally:
        await conn.close()
    assert time.monotonic() - start >= rig.settings.server.header_timeout * 0.8


@pytest.mark.brisk
async def test_limits_half_sent_second_head_on_keepalive_is_closed(rig: Rig, token: str) -> None:
    conn = await rig.raw()
    try:
        await conn.send(http("GET", "/first", [bearer(token)]))
        assert (await conn.reply()).status == 200
        start = time.monotonic()
        await conn.send(b"GET /second HTTP/1.1\r\nHost: k\r\n")
        assert await conn.closed_within(rig.settings.server.header_timeout + 1.0)
        assert time.monotonic() - start < rig.settings.server.header_timeout + 1.0
    finally:
        await conn.close()
    assert rig.up.paths() == ["/first"]


async def test_limits_many_slow_heads_do_not_block_others(rig: Rig, token: str) -> None:
    slow = [await rig.raw() for _ in range(50)]
    try:
        for conn in slow:
            await conn.send(b"GET / HTTP/1.1\r\n")
        reply = await rig.exchange(http("GET", "/fast", [bearer(token)]), within=1.0)
        assert reply.status == 200
        results = await asyncio.gather(*(c.closed_within(3.0) for c in slow))
        assert all(results)
    finally:
        for conn in slow:
            await conn.close()


# --- request body -----------------------------------------------------------------


@pytest.mark.brisk
async def test_limits_stalled_body_is_cut_after_body_idle_timeout(rig: Rig, token: str) -> None:
    conn = await rig.raw()
    start = time.monotonic()
    try:
        await conn.send(http("POST", "/upload", [bearer(token), ("Content-Length", "1000")],
                             b"x" * 100))
        try:
            reply = await conn.reply(within=4.0)
            assert reply.status == 400 and reply.code == "body_timeout"
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # cut without an answer is as good
    finally:
        await conn.close()
    assert time.monotonic() - start < rig.settings.server.body_idle_timeout + 2.0
    # The upstream never saw that body complete.
    await wait_for(lambda: rig.up.broken_bodies == len(rig.up.seen), what="upstream body cut")
    assert all(s.body_len is None for s in rig.up.seen)


@pytest.fixture
async def limited(rig_factory: RigFactory, recorder: Recorder) -> Rig:
    routes = (
        Route(name="small", prefix="/small", upstream=recorder.url, max_body_bytes=1000),
        Route(name="default", prefix="/", upstream=recorder.url),
    )
    return await rig_factory(routes=routes)


@pytest.mark.parametrize("size", [1001, 10**6, 10**12])
async def test_limits_declared_body_over_limit_is_413_before_upstream(
    limited: Rig, size: int
) -> None:
    token = await limited.key()
    conn = await limited.raw()
    try:
        await conn.send(http("POST", "/small/x", [bearer(token), ("Content-Length", str(size))]))
        reply = await conn.reply()
    finally:
        await conn.close()
    assert reply.status == 413 and reply.code == "too_large"
    assert limited.up.seen == []


async def test_limits_body_at_limit_passes(limited: Rig) -> None:
    token = await limited.key()
    body = b"y" * 1000
    reply = await limited.exchange(
        http("POST", "/small/x", [bearer(token), ("Content-Length", "1000")], body)
    )
    assert reply.status == 200
    assert limited.up.last().body_len == 1000


async def test_limits_chunked_body_over_limit_is_cut_mid_stream(limited: Rig) -> None:
    token = await limited.key()
    conn = await limited.raw()
    try:
        await conn.send(http("POST", "/small/x", [bearer(token), ("Transfer-Encoding", "chunked")]))
        for _ in range(5):
            await conn.send(b"190\r\n" + b"z" * 400 + b"\r\n")  # 2000 bytes in all
        await conn.send(b"0\r\n\r\n")
        try:
            reply = await conn.reply()
            assert reply.status == 413
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
    finally:
        await conn.close()
    # Whatever reached the upstream never completed with more than the limit.
    await wait_for(
        lambda: all(s.body_len is not None or limited.up.broken_bodies for s in limited.up.seen),
        what="upstream request settled",
    )
    assert all((s.body_len or 0) <= 1000 for s in limited.up.seen)


async def test_limits_large_upload_streams_with_flat_memory(rig: Rig, token: str) -> None:
    size = 48 * MIB
    conn = await rig.raw()
    try:
        await conn.send(http("PUT", "/up", [bearer(token), ("Content-Length", str(size))]))
        base = rss_bytes()
        peak = base
        for _ in range(size // MIB):
            await conn.send(b"u" * MIB)
            peak = max(peak, rss_bytes())
        reply = await conn.reply(within=30.0)
    finally:
        await conn.close()
    assert reply.status == 200
    assert rig.up.last().body_len == size
    assert peak - base < 30 * MIB, (peak - base) / MIB


# --- header limits ----------------------------------------------------------------


@pytest.fixture
async def tight(rig_factory: RigFactory) -> Rig:
    return await rig_factory(
        server={"max_header_count": 20, "max_header_bytes": 1024, "max_line_bytes": 512}
    )


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ([(f"X-H{i}", "v") for i in range(25)], 431),
        ([("X-Big", "v" * 2000)], 431),
        ([("X-" + "N" * 2000, "v")], 431),
        ([(f"X-H{i}", "v" * 900) for i in range(15)], 200),
    ],
    ids=["too_many", "long_value", "long_name", "many_within_limit"],
)
async def test_limits_header_limits_are_431(
    tight: Rig, extra: list[tuple[str, str]], status: int
) -> None:
    token = await tight.key()
    reply = await tight.exchange(http("GET", "/h", [bearer(token), *extra]))
    assert reply.status == status, reply.body[:200]
    if status == 431:
        assert reply.code == "headers_too_large"
        assert tight.up.seen == []


async def test_limits_long_request_line_is_414(tight: Rig) -> None:
    token = await tight.key()
    reply = await tight.exchange(http("GET", "/" + "a" * 600, [bearer(token)]))
    assert reply.status == 414 and reply.code == "uri_too_long"
    assert tight.up.seen == []


@pytest.mark.parametrize(
    ("target", "extra", "status"),
    [("/" + "a" * 700, [], 414), ("/", [("X-Big", "v" * 700)], 431)],
    ids=["line", "header"],
)
async def test_limits_equal_line_and_field_limits_still_tell_414_from_431(
    rig_factory: RigFactory, target: str, extra: list[tuple[str, str]], status: int
) -> None:
    rig = await rig_factory(server={"max_header_bytes": 600, "max_line_bytes": 600})
    reply = await rig.exchange(http("GET", target, extra))
    assert reply.status == status
    assert rig.up.seen == []


# --- concurrency per route -----------------------------------------------------------


async def test_limits_route_connections_bounded_fast_503(
    rig_factory: RigFactory, recorder: Recorder
) -> None:
    routes = (Route(name="narrow", prefix="/", upstream=recorder.url, max_connections=2),)
    rig = await rig_factory(routes=routes)
    token = await rig.key()
    held = [await rig.raw() for _ in range(2)]
    try:
        for conn in held:
            await conn.send(http("GET", "/_up/hold", [bearer(token)]))
        await wait_for(lambda: recorder.holding == 2, what="two held upstream requests")
        start = time.monotonic()
        reply = await rig.exchange(http("GET", "/_up/hold", [bearer(token)]), within=2.0)
        assert reply.status == 503 and reply.code == "upstream_busy"
        assert time.monotonic() - start < 0.5
        assert recorder.holding == 2 and len(recorder.seen) == 2
        recorder.release.set()
        for conn in held:
            assert (await conn.reply()).status == 200
    finally:
        for conn in held:
            await conn.close()
    reply = await rig.exchange(http("GET", "/after", [bearer(token)]))
    assert reply.status == 200
    assert rig.gw.gates["narrow"].in_flight == 0


# --- responses -------------------------------------------------------------------


async def test_limits_100mb_response_streams_with_flat_memory(rig: Rig, token: str) -> None:
    mib = 100
    warm = await rig.exchange(http("GET", "/_up/big/1", [bearer(token)]))
    assert warm.status == 200 and len(warm.body) == MIB
    conn = await rig.raw()
    try:
        await conn.send(http("GET", f"/_up/big/{mib}", [bearer(token)]))
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert f"Content-Length: {mib * MIB}".encode() in head
        base = rss_bytes()
        peak, got, reads = base, 0, 0
        while got < mib * MIB:
            chunk = await conn.reader.read(MIB)
            assert chunk, "response ended early"
            got += len(chunk)
            reads += 1
            if reads % 16 == 0:
                peak = max(peak, rss_bytes())
    finally:
        await conn.close()
    assert got == mib * MIB
    assert peak - base < 30 * MIB, f"RSS grew {(peak - base) / MIB:.1f} MiB"


# --- Expect: 100-continue ----------------------------------------------------------


async def _expect(rig: Rig, headers: list[tuple[str, str]], size: int = 10) -> tuple[int, bool]:
    """Send a head with Expect: 100-continue and no body; (first status, closed after)."""
    conn = await rig.raw()
    try:
        await conn.send(http("POST", "/e", [("Expect", "100-continue"),
                                            ("Content-Length", str(size)), *headers]))
        first = await conn.reply(within=2.0, interim=True)
        closed = first.status >= 200 and await conn.closed_within(3.0)
        return first.status, closed
    finally:
        await conn.close()


@pytest.mark.brisk  # the connection lingers for the uninvited body (body_idle_timeout)
@pytest.mark.parametrize(
    "headers",
    [[], [bearer("kg_bad")], [("X-API-Key", "kg_" + "a" * 51)]],
    ids=["missing", "malformed", "bad_checksum"],
)
async def test_limits_expect_continue_bad_key_is_401_without_body(
    rig: Rig, headers: list[tuple[str, str]]
) -> None:
    status, closed = await _expect(rig, headers)
    assert status == 401
    assert closed  # the body was never invited, so the connection cannot go on
    assert rig.up.seen == []


@pytest.mark.brisk
async def test_limits_expect_continue_forbidden_is_403_without_body(rig: Rig) -> None:
    rule = {"route": "default", "methods": ["GET"], "paths": ["/**"]}
    await rig.kg.services.groups.create(
        await rig.kg.admin_actor(), {"name": "reader", "rules": [rule]}
    )
    reader = await rig.key(["reader"])
    status, _ = await _expect(rig, [bearer(reader)])
    assert status == 403
    assert rig.up.seen == []


async def test_limits_expect_continue_over_limit_is_413_without_body(limited: Rig) -> None:
    token = await limited.key()
    conn = await limited.raw()
    try:
        await conn.send(http("POST", "/small/x", [bearer(token), ("Expect", "100-continue"),
                                                   ("Content-Length", "5000")]))
        first = await conn.reply(within=2.0, interim=True)
    finally:
        await conn.close()
    assert first.status == 413
    assert limited.up.seen == []


async def test_limits_expect_continue_valid_key_gets_100_then_forwarded(
    rig: Rig, token: str
) -> None:
    conn = await rig.raw()
    try:
        await conn.send(http("POST", "/e", [bearer(token), ("Expect", "100-continue"),
                                            ("Content-Length", "10")]))
        interim = await conn.reply(within=2.0, interim=True)
        assert interim.status == 100
        assert rig.up.seen == []  # nothing forwarded before the body was invited
        await conn.send(b"0123456789")
        final = await conn.reply()
    finally:
        await conn.close()
    assert final.status == 200
    seen = rig.up.last()
    assert seen.body_len == 10 and seen.values("Expect") == []


async def test_limits_expect_unknown_expectation_is_417(rig: Rig, token: str) -> None:
    reply = await rig.exchange(
        http("POST", "/e", [bearer(token), ("Expect", "200-ok"), ("Content-Length", "1")])
    )
    assert reply.status == 417
    assert rig.up.seen == []
