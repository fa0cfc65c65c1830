"""Expiry and traffic notices (docs/webhooks.md#events), and one delivery per
event however many processes share the store."""

from __future__ import annotations

from collections import Counter

from keygate.gateway.store.records import utcnow
from tests.support.admin import AdminApi
from tests.support.polling import wait_for
from tests.webhooks.conftest import HookFactory
from tests.webhooks.receiver import Receiver


async def test_expiry_notices_once_each_across_two_gateways(
    hooks_factory: HookFactory, receiver: Receiver, either_store: str
) -> None:
    one = await hooks_factory(url=either_store)
    two = await hooks_factory(url=either_store, admin_token=one.admin_token)
    api = AdminApi(one)
    made = await api.post(
        "/keys",
        api.admin,
        {"groups": ["default"], "webhook_url": receiver.url("/ok"), "expires_in": 2},
    )
    secret = made.json["webhook_secret"]

    def types() -> list[str]:
        return [d.verify(secret)["type"] for d in receiver.at("/ok")]

    await wait_for(lambda: "key.expired" in types(), within=15, what="key.expired")
    # Another look by each gateway finds nothing more to send.
    assert await one.gw.store.expiry_notices(utcnow()) == 0
    assert await two.gw.store.expiry_notices(utcnow()) == 0
    counts = Counter(types())
    assert counts == {"key.created": 1, "key.expiring": 1, "key.expired": 1}
    expiring = next(d.json for d in receiver.at("/ok") if d.json["type"] == "key.expiring")
    assert expiring["data"]["notice"] == "1d"
    expired = next(d.json for d in receiver.at("/ok") if d.json["type"] == "key.expired")
    assert expired["data"]["key"]["status"] == "expired"


async def test_each_event_delivered_by_exactly_one_of_two_gateways(
    hooks_factory: HookFactory, receiver: Receiver, either_store: str
) -> None:
    one = await hooks_factory(url=either_store)
    two = await hooks_factory(url=either_store, admin_token=one.admin_token)
    apis = [AdminApi(one), AdminApi(two)]
    kids = []
    for i in range(6):  # the admin may hold 10 keys, one made at start
        api = apis[i % 2]
        made = await api.post(
            "/keys", api.admin, {"groups": ["default"], "webhook_url": receiver.url("/ok")}
        )
        kids.append(made.json["key"]["id"])
        for n in range(3):
            await api.patch(f"/keys/{kids[-1]}", api.admin, {"name": f"k{i}-{n}"})
    await wait_for(lambda: len(receiver.at("/ok")) >= 24, within=20, what="24 deliveries")
    ids = Counter(d.msg_id for d in receiver.at("/ok"))
    assert len(ids) == 24 and set(ids.values()) == {1}
    # In order per key.
    for kid in kids:
        names = [
            d.json["type"] + ":" + d.json["data"]["key"]["name"]
            for d in receiver.at("/ok")
            if d.json["data"]["key"]["id"] == kid
        ]
        assert names[0].startswith("key.created") and names[-1].endswith("-2"), names
        assert [n.split("-")[-1] for n in names[1:]] == ["0", "1", "2"]


async def test_traffic_notice_once_per_cooldown(
    hooks_factory: HookFactory, receiver: Receiver
) -> None:
    kg = await hooks_factory(cooldown=300)
    api = AdminApi(kg)
    made = await api.post(
        "/keys",
        api.admin,
        {"groups": ["default"], "webhook_url": receiver.url("/ok"), "allowed_ips": ["10.0.0.0/8"]},
    )
    token, kid = made.json["token"], made.json["key"]["id"]
    for _ in range(5):
        assert (await api.proxy(token)).status == 403
    await wait_for(
        lambda: any(d.json["type"] == "key.ip_denied" for d in receiver.at("/ok")),
        within=5,
        what="key.ip_denied",
    )
    # A later event is delivered after any second notice would have been.
    assert (await api.post(f"/keys/{kid}/webhook-test", api.admin)).status == 202
    await wait_for(
        lambda: receiver.at("/ok")[-1].json["type"] == "key.test", within=5, what="the ping"
    )
    types = Counter(d.verify(made.json["webhook_secret"])["type"] for d in receiver.at("/ok"))
    assert types["key.ip_denied"] == 1
