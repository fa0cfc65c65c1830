"""A key's webhook deliveries on its details page (docs/console.md#key-details):
the list, a test ping, redelivery, and the rotated secret shown once."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.console.conftest import Tab, World


def test_console_key_details_show_webhook_deliveries(
    tab: Tab, world: World, tmp_path: Path
) -> None:
    # Nothing answers at this name: each delivery fails and waits for its retry.
    made = world.call(
        "POST",
        "/keys",
        world.admin,
        {"groups": ["default"], "name": "hooked", "webhook_url": "https://hooks.example/kg"},
    )
    assert made.status == 201
    key = made.body["key"]
    tab.sign_in(world.admin)
    tab.page.goto(world.console + f"#/keys/{key['id']}")
    card = tab.page.locator("#webhook-deliveries")
    expect(card.get_by_role("heading", name="Webhook deliveries")).to_be_visible()
    expect(card.locator("tbody tr")).to_have_count(1)
    expect(card.locator("tbody tr").first).to_contain_text("key.created")
    expect(card.locator("tbody tr").first).to_contain_text("webhook URL")

    card.get_by_role("button", name="Send a test").click()
    expect(tab.page.locator(".flash")).to_contain_text("key.test")
    expect(card.locator("tbody tr")).to_have_count(2)
    expect(card.locator("tbody tr").first).to_contain_text("key.test")
    # The failing attempt is shown with its reason.
    expect(card.locator("tbody tr").last).to_contain_text("cannot connect", timeout=10_000)

    card.get_by_role("button", name="Redeliver key.created").click()
    expect(card.locator("tbody tr")).to_have_count(3)

    card.get_by_role("button", name="Rotate secret…").click()
    tab.page.get_by_role("button", name="Rotate", exact=True).click()
    secret = tab.page.locator("#new-webhook-secret")
    expect(secret).to_have_value(re.compile(r"^whsec_"))
    tab.page.screenshot(path=str(tmp_path / "webhook-rotated.png"))  # to look at by hand
    tab.page.get_by_role("button", name="I have stored it").click()
    expect(tab.page.locator("#new-webhook-secret")).to_have_count(0)
    assert "whsec_" not in tab.page.content()
    tab.page.screenshot(path=str(tmp_path / "webhook-details.png"), full_page=True)
