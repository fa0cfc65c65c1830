"""Imported keys end to end (docs/reference.md#imported-keys): each format's file
imported, then its keys used through the proxy exactly as clients send them,
on both front ends; refusals of unknown tokens of any format from memory;
bad input refused whole; a second run skips."""

from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import Any

import pytest

from keygate.gateway.errors import Forbidden, Unauthorized
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.imports import read
from keygate.gateway.service.imports.check import Defaults
from keygate.gateway.service.imports.service import ImportReport
from keygate.gateway.store import open_store
from tests.support.gateway import GatewayFactory, Keygate, default_route
from tests.support.polling import wait_for
from tests.support.stores import CountingFactory, settle
from tests.support.upstreams import Recorder

DATA = Path(__file__).parent.parent / "data" / "imports"
# Each sample file, and the tokens in it as its clients send them.
SAMPLES = {
    "kong": ("key-auths.json", [
        "bcbfb45d-e391-42bf-c2e5-94e98dd8cb7d",
        "Kp9vX2mQ7rT4wY8zA1bC3dE5fG6hJ0kL",
        "mobile-app-secondary-key-0001",
    ]),
    "nginx-map": ("api_keys.map", [
        "9f2c7e1a4b8d3f6a0c5e",
        "legacy;key#with:punct!1",
        "4d9e8b7a6c5f4e3d2c1b",
        "quoted-name-key-0001",
        "default-looking-key-0002",
    ]),
    "csv": ("clients.csv", [
        "sheet-key-0001-abcdef", "sheet-key-0002-abcdef", "sheet-key-0003-abcdef",
    ]),
    "json": ("keys.jsonl", ["jsonl-key-0001-abcdef", "jsonl-key-0002-abcdef"]),
}  # fmt: skip
VISIBLE = string.ascii_letters + string.digits + string.punctuation


def random_token() -> str:
    """A token of another system's shape that nobody imported."""
    return "".join(secrets.choice(VISIBLE) for _ in range(secrets.choice((16, 24, 40))))


async def import_file(
    kg: Keygate, fmt: str, raw: bytes, *, owner: str | None = "admin", **kw: Any
) -> ImportReport:
    found = read(raw, fmt)
    return await kg.services.imports.run(
        kg.actor(),
        found.entries,
        found.problems,
        defaults=Defaults(owner=owner, groups=("default",), source=fmt),
        **kw,
    )


async def call(kg: Keygate, token: str, header: str = "X-API-Key") -> tuple[int, Any]:
    value = f"Bearer {token}" if header == "Authorization" else token
    resp = await kg.client.get("/orders/1", headers={header: value})
    return resp.status, await resp.json()


@pytest.fixture(params=[True, False], ids=["edge", "aiohttp"])
async def kg(
    request: pytest.FixtureRequest, keygate_factory: GatewayFactory, upstream: Recorder
) -> Keygate:
    return await keygate_factory(
        default_route(upstream.url), server={"fast_path": request.param}
    )


# --- each format, then the proxy ------------------------------------------------------
@pytest.mark.parametrize("fmt", list(SAMPLES))
async def test_import_each_format_keys_work_through_the_proxy(
    kg: Keygate, upstream: Recorder, fmt: str
) -> None:
    name, tokens = SAMPLES[fmt]
    report = await import_file(kg, fmt, (DATA / name).read_bytes())
    assert (report.imported, report.skipped, report.invalid) == (len(tokens), 0, [])
    for token in tokens:
        for header in ("X-API-Key", "Authorization"):
            status, body = await call(kg, token, header)
            assert status == 200, (token, body)
            seen = upstream.seen[-1]
            assert seen.header("X-Keygate-User") == "admin"
            # The credential stays between the client and keygate.
            assert seen.header(header) is None
    # A near miss of a real key is refused (one character off, or a prefix).
    assert (await call(kg, tokens[0][:-1] + "#"))[0] == 401
    assert (await call(kg, tokens[0][:-1]))[0] == 401


async def test_import_records_display_source_and_unique_names(kg: Keygate) -> None:
    await import_file(kg, "csv", (DATA / "clients.csv").read_bytes())
    keys, _ = await kg.services.keys.list(kg.actor(), search="billing sync")
    shown = sorted((k.name, k.display, k.metadata["imported_from"]) for k in keys)
    assert shown == [("billing sync", "…cdef", "csv"), ("billing sync-2", "…cdef", "csv")]
    kong = await import_file(kg, "kong", (DATA / "key-auths.json").read_bytes())
    assert kong.imported == 3
    keys, _ = await kg.services.keys.list(kg.actor(), search="mobile-app")
    assert sorted((k.name, k.display) for k in keys) == [
        ("mobile-app", "Kp9v…J0kL"),  # 32 characters: the first 4 shown too
        ("mobile-app-2", "…0001"),
    ]


async def test_import_second_run_skips_everything(kg: Keygate) -> None:
    raw = (DATA / "api_keys.map").read_bytes()
    first = await import_file(kg, "nginx-map", raw)
    again = await import_file(kg, "nginx-map", raw)
    assert (first.imported, first.skipped) == (5, 0)
    assert (again.imported, again.skipped, again.invalid) == (0, 5, [])
    keys, _ = await kg.services.keys.list(kg.actor(), limit=500)
    assert len([k for k in keys if k.imported]) == 5


async def test_import_dry_run_writes_nothing(kg: Keygate) -> None:
    raw = (DATA / "keys.jsonl").read_bytes()
    report = await import_file(kg, "json", raw, dry_run=True)
    assert (report.imported, report.skipped, report.dry_run) == (2, 0, True)
    assert (await call(kg, "jsonl-key-0001-abcdef"))[0] == 401
    assert (await kg.gw.store.imported_keys(0)).digests == []


# --- the same rules as keygate's own keys ----------------------------------------------
async def test_imported_key_status_expiry_and_groups_apply(kg: Keygate) -> None:
    await import_file(kg, "json", (DATA / "keys.jsonl").read_bytes())
    token = "jsonl-key-0001-abcdef"
    assert (await call(kg, token))[0] == 200
    keys, _ = await kg.services.keys.list(kg.actor(), search="etl")
    (key,) = keys
    await kg.services.keys.set_status(kg.actor(), key.id, "disabled")
    status, body = await call(kg, token)
    assert (status, body["error"]["code"]) == (401, "key_disabled")
    await kg.services.keys.update(kg.actor(), key.id, {"status": "active", "groups": []})
    status, body = await call(kg, token)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    await kg.services.keys.revoke(kg.actor(), key.id)
    assert (await call(kg, token))[0] == 401


async def test_imported_key_rolled_gets_a_keygate_token(kg: Keygate) -> None:
    await import_file(kg, "json", (DATA / "keys.jsonl").read_bytes())
    keys, _ = await kg.services.keys.list(kg.actor(), search="etl")
    issued = await kg.services.keys.roll(kg.actor(), keys[0].id, {"grace_seconds": 60})
    assert issued.token.startswith(f"kg_{keys[0].id}_")
    assert issued.key.display.startswith(f"kg_{keys[0].id}_…")
    assert (await call(kg, issued.token))[0] == 200
    assert (await call(kg, "jsonl-key-0001-abcdef"))[0] == 200  # in its grace


async def test_imported_key_works_as_an_admin_credential(kg: Keygate) -> None:
    await import_file(kg, "json", b'{"key": "admin-legacy-key-0001", "groups": ["admin"]}\n')
    resp = await kg.client.get(
        "/_keygate/api/v1/me", headers={"Authorization": "Bearer admin-legacy-key-0001"}
    )
    assert resp.status == 200
    assert (await resp.json())["user"]["username"] == "admin"


# --- memory: refusals without store queries ---------------------------------------------
async def test_unknown_tokens_of_any_format_refused_without_store_lookups(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(default_route(upstream.url))
    await import_file(kg, "kong", (DATA / "key-auths.json").read_bytes())
    await settle(st)
    assert (await call(kg, "bcbfb45d-e391-42bf-c2e5-94e98dd8cb7d"))[0] == 200
    lookups = st.auth_lookups
    assert lookups == 1
    for _ in range(200):
        status, body = await call(kg, random_token())
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert st.auth_lookups == lookups
    assert kg.gw.verifier.lookups == lookups
    # Within a catch-up window a refusal is synchronous: not even the change feed.
    verifier = kg.gw.verifier
    now = [1000.0]
    verifier.clock = lambda: now[0]
    with pytest.raises(Unauthorized):  # the load path: a catch-up, then the refusal
        await verifier.verify(random_token())
    probes, reads = st.version_probes, st.changes_reads
    refused = 0
    for _ in range(500):
        try:
            verifier.cached(random_token())
        except Unauthorized:
            refused += 1
    assert refused == 500
    assert (st.auth_lookups, st.changes_reads) == (lookups, reads)
    assert st.version_probes - probes <= 2  # the app's own poll loop, at most


async def test_no_imported_keys_no_change_for_other_formats(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(default_route(upstream.url))
    await settle(st)
    assert len(kg.gw.memory.imported) == 0
    probes = st.version_probes
    for _ in range(100):
        status, body = await call(kg, random_token())
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert st.auth_lookups == 0
    # Refused by format, as always: no change-feed catch-up either.
    assert st.version_probes - probes <= 2


async def test_import_by_another_process_works_here_soon(kg: Keygate) -> None:
    other = open_store(kg.settings.store.url)
    await other.open()
    try:
        services = Services.build(ServiceContext(other, kg.settings.auth))
        found = read((DATA / "keys.jsonl").read_bytes(), "json")
        await services.imports.run(
            Actor.cli(), found.entries, defaults=Defaults(owner="admin", groups=("default",))
        )
    finally:
        await other.close()

    async def works() -> bool:
        return (await call(kg, "jsonl-key-0002-abcdef"))[0] == 200

    await wait_for(works, within=5.0, what="the imported key to work")


# --- bad input: reasons with line numbers, nothing written -------------------------------
BAD = [
    ("csv", b"key,name\nshort-key,a\n", [(2, "the key is shorter than 16 characters")]),
    ("csv", b"key\nkey with a space inside\n",
     [(2, "the key holds spaces, control or non-ASCII characters")]),
    ("json", b'{"key": "tab\\tinside-the-key-123"}\n',
     [(1, "the key holds spaces, control or non-ASCII characters")]),
    ("csv", b"key\n" + b"x" * 257 + b"\n", [(2, "the key is longer than 256 characters")]),
    ("csv", b"key,name\nduplicate-key-0001,a\nfine-key-00000002,b\nduplicate-key-0001,c\n",
     [(4, "the same key as line 2")]),
    ("csv", b"key,owner\nowned-key-00000001,nobody\n", [(2, "no such user 'nobody'")]),
    ("csv", b"key,groups\ngrouped-key-000001,no-such-group\n",
     [(2, "unknown group 'no-such-group'")]),
    ("csv", b"key,expires_at\nexpired-key-000001,2001-01-01T00:00:00Z\n",
     [(2, "expires_at is in the past")]),
    ("csv", b"key\nkg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNT\n",
     [(2, "the key is a keygate token already: keygate would read it as one of its own")]),
    ("csv", b"", [(0, "the file holds no keys")]),
    ("json", b'{"name": "keyless"}\n{"key": 1234567890123456789}\n',
     [(1, "no key"), (2, "the key must be a string")]),
    ("json", b'[{"key": "fine-key-00000001"},\n{"key": "trunc', None),
    ("nginx-map", b'map $http_x_api_key $c {\n "fine-key-00000001" a;\n', None),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "raw", "problems"), BAD)
async def test_import_bad_input_names_lines_and_writes_nothing(
    keygate: Keygate, fmt: str, raw: bytes, problems: list[tuple[int, str]] | None
) -> None:
    good = b"good-key-000000001"
    if fmt == "csv" and raw:
        # Valid lines beside the bad ones are not written either.
        raw += good + b"," * raw.split(b"\n")[0].count(b",") + b"\n"
    report = await import_file(keygate, fmt, raw)
    got = [(p.line, p.reason) for p in report.invalid]
    if problems is None:
        assert len(got) == 1 and "truncated" in got[0][1]
    else:
        assert got == problems
    assert report.imported == 0
    assert (await keygate.gw.store.imported_keys(0)).digests == []


async def test_import_without_owner_is_invalid(keygate: Keygate) -> None:
    report = await import_file(keygate, "csv", b"key\nownerless-key-0001\n", owner=None)
    assert [(p.line, p.reason) for p in report.invalid] == [
        (2, "no owner (give one in the file, or --owner)")
    ]


async def test_import_owner_may_not_hold_the_group(keygate: Keygate) -> None:
    await keygate.services.users.create(keygate.actor(), {"username": "bob", "groups": []})
    report = await import_file(keygate, "csv", b"key\nbobs-key-00000001\n", owner="bob")
    assert [p.reason for p in report.invalid] == ["the owner 'bob' may not hold group 'default'"]


async def test_import_key_limit_reported_not_applied(
    keygate_factory: GatewayFactory, upstream: Recorder
) -> None:
    kg = await keygate_factory(default_route(upstream.url), max_keys_per_user=3)
    raw = b"key\n" + b"".join(b"limit-key-%08d\n" % i for i in range(5))
    report = await import_file(kg, "csv", raw)
    assert report.imported == 5
    assert report.over_limit == [("admin", 6, 3)]  # the bootstrap admin key, and 5


async def test_import_needs_an_admin(keygate: Keygate) -> None:
    member = Actor("u_x", "bob", "k" * 12, ("self-service",), "test")
    found = read(b"key\nmember-key-000001\n", "csv")
    with pytest.raises(Forbidden):
        await keygate.services.imports.run(member, found.entries, defaults=Defaults("bob"))


async def test_import_elsewhere_admitted_once_its_window_has_passed(kg: Keygate) -> None:
    """Refusals of other formats trust memory for ``imported_window`` after a
    catch-up; past it, a token imported by another process meanwhile is found."""
    await import_file(kg, "json", b'{"key": "first-import-key-0001"}\n')
    verifier = kg.gw.verifier
    now = [1000.0]
    verifier.clock = lambda: now[0]
    with pytest.raises(Unauthorized):
        await verifier.verify(random_token())  # a catch-up: memory covers "now"
    other = open_store(kg.settings.store.url)
    await other.open()
    try:
        services = Services.build(ServiceContext(other, kg.settings.auth))
        found = read(b'{"key": "imported-elsewhere-0001"}\n', "json")
        await services.imports.run(
            Actor.cli(), found.entries, defaults=Defaults(owner="admin", groups=("default",))
        )
    finally:
        await other.close()
    now[0] += verifier.imported_window * 1.01
    principal = await verifier.verify("imported-elsewhere-0001")
    assert principal.username == "admin"


async def test_deleted_imported_key_refused_then_remembered(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(default_route(upstream.url))
    await import_file(kg, "json", b'{"key": "soon-deleted-key-0001", "name": "gone"}\n')
    await settle(st)
    keys, _ = await kg.services.keys.list(kg.actor(), search="gone")
    await kg.services.keys.delete(kg.actor(), keys[0].id)
    await settle(st)
    before = st.auth_lookups
    for _ in range(20):
        status, body = await call(kg, "soon-deleted-key-0001")
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert st.auth_lookups == before + 1  # then the negative cache answers
