"""Where a webhook may go: refused when the URL is set, and again at connect
time when the name resolves elsewhere by then (docs/webhooks.md#where-a-webhook-may-go)."""

from __future__ import annotations

import pytest

from tests.support.admin import AdminApi
from tests.support.polling import wait_for
from tests.webhooks.conftest import HookFactory, StubResolver
from tests.webhooks.receiver import Receiver

REFUSED = [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[::1]/hook", "loopback"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://[64:ff9b::7f00:1]/hook", "loopback"),
    ("https://[64:ff9b::a9fe:a9fe]/hook", "link-local"),
    ("https://[::127.0.0.1]/hook", "loopback"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://2130706433/hook", "non-standard form"),
    ("https://0x7f000001/hook", "non-standard form"),
    ("https://0177.0.0.1/hook", "non-standard form"),
    ("https://127.1/hook", "non-standard form"),
    ("https://loopback.test/hook", "loopback"),
    ("https://rebind.test/hook", "private"),
    ("https://user:pw@hooks.example/hook", "userinfo"),
    ("http://hooks.example/hook", "https"),
    ("ftp://hooks.example/hook", "http(s) URL"),
    ("https://0.0.0.0/hook", "private"),
    ("https://100.64.0.1/hook", "not global"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
async def test_ssrf_refused_when_set(
    hooks_factory: HookFactory, resolver: StubResolver, url: str, reason: str
) -> None:
    resolver.names.update({"loopback.test": "127.0.0.1", "rebind.test": "10.9.8.7"})
    kg = await hooks_factory(allow_http=False, allow_private=False)
    api = AdminApi(kg)
    created = await api.post("/keys", api.admin, {"groups": ["default"], "webhook_url": url})
    assert created.status == 422, created.raw
    assert reason in created.details["webhook_url"]
    made = await api.post("/keys", api.admin, {"groups": ["default"]})
    patched = await api.patch(f"/keys/{made.json['key']['id']}", api.admin, {"webhook_url": url})
    assert patched.status == 422 and reason in patched.details["webhook_url"]


async def test_ssrf_link_local_refused_even_when_private_allowed(
    hooks_factory: HookFactory, resolver: StubResolver
) -> None:
    resolver.names["metadata.test"] = "169.254.169.254"
    kg = await hooks_factory(allow_private=True)
    api = AdminApi(kg)
    for url in ("http://169.254.169.254/", "http://metadata.test/", "http://[::ffff:169.254.1.1]/"):
        reply = await api.post("/keys", api.admin, {"groups": ["default"], "webhook_url": url})
        assert reply.status == 422 and "link-local" in reply.details["webhook_url"], url


async def test_ssrf_global_names_and_unresolvable_names_are_accepted(
    hooks_factory: HookFactory, resolver: StubResolver
) -> None:
    resolver.names["hooks.test"] = "93.184.216.34"
    kg = await hooks_factory(allow_http=False, allow_private=False)
    api = AdminApi(kg)
    for url in ("https://hooks.test/x", "https://nowhere.invalid/x", "https://93.184.216.34/"):
        reply = await api.post("/keys", api.admin, {"groups": ["default"], "webhook_url": url})
        assert reply.status == 201, (url, reply.raw)


async def test_ssrf_refused_at_connect_time_after_the_name_moved(
    hooks_factory: HookFactory, resolver: StubResolver, receiver: Receiver
) -> None:
    """DNS rebinding: global when set, loopback when delivered."""
    resolver.names["flip.test"] = "93.184.216.34"
    kg = await hooks_factory(allow_private=False, retry_schedule=(0.1,))
    api = AdminApi(kg)
    assert receiver.server is not None
    url = f"http://flip.test:{receiver.server.port}/ok"
    resolver.names["flip.test"] = "93.184.216.34"
    made = await api.post("/keys", api.admin, {"groups": ["default"], "webhook_url": url})
    assert made.status == 201, made.raw
    kid = made.json["key"]["id"]
    resolver.names["flip.test"] = "127.0.0.1"  # the receiver, on loopback
    # The first attempt may already have gone to the global address (nothing
    # answers there in a sandbox); every one after the move is refused.

    async def refused() -> bool:
        reply = await api.get(f"/keys/{kid}/webhook-deliveries", api.admin)
        items = reply.json["items"]
        return bool(items) and items[0]["status"] == "abandoned"

    await wait_for(refused, within=10, what="the delivery abandoned")
    reply = await api.get(f"/keys/{kid}/webhook-deliveries", api.admin)
    assert "loopback" in reply.json["items"][0]["last_error"]
    assert receiver.got == []
