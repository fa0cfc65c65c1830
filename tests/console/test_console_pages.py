"""Users, Groups and Audit in real Chromium, and how the console looks from 1280 px down
to a phone's width in both themes (docs/console.md).

The screenshots are written to the test's temporary folder, or to
``KEYGATE_SCREENSHOTS`` when set (``KEYGATE_SCREENSHOTS=docs pytest
tests/console/test_console_pages.py -k screenshots`` refreshes the ones in docs/).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Tab, World, open_tab


def test_console_users_create_and_change_a_user(tab: Tab, world: World) -> None:
    tab.sign_in(world.admin)
    tab.page.get_by_role("link", name="Users").click()
    tab.page.get_by_role("button", name="New user").click()
    dialog = tab.page.get_by_role("dialog", name="New user")
    dialog.get_by_label("Username").fill("ivan")
    dialog.get_by_role("button", name="Create user").click()
    expect(tab.page.get_by_role("status")).to_contain_text("User created")
    tab.page.get_by_role("link", name="ivan", exact=True).click()
    tab.page.get_by_role("tab", name="Profile").click()
    tab.page.get_by_role("button", name="Delete user…").click()
    confirm = tab.page.get_by_role("dialog", name="Delete ivan?")
    expect(confirm).to_contain_text("0 keys of theirs are revoked")
    confirm.get_by_role("button", name="Cancel").click()
    assert world.call("GET", "/users/ivan", world.admin).status == 200


def test_console_groups_rules_editor_and_delete_in_use_with_force(tab: Tab, world: World) -> None:
    tab.sign_in(world.admin)
    tab.page.get_by_role("link", name="Groups").click()
    tab.page.get_by_role("button", name="New group").click()
    dialog = tab.page.get_by_role("dialog", name="New group")
    expect(dialog.locator("form")).not_to_contain_text("null")
    dialog.get_by_label("Name").fill("reports-read")
    dialog.get_by_label("Description").fill("Read the reports")
    rule = dialog.locator("fieldset.rule-editor")
    expect(rule.get_by_label("Route").locator("option")).to_have_text(["* (any route)", "default"])
    rule.get_by_label("Route").select_option("default")
    rule.get_by_label("HEAD").check()
    rule.get_by_label("Paths (one glob a line: * one segment, ** any depth)").fill("/reports/**")
    dialog.get_by_role("button", name="Create group").click()
    card = tab.page.locator("section.group[data-group=reports-read]")
    expect(card).to_contain_text("default: GET, HEAD on /reports/**")
    group = world.call("GET", "/groups/reports-read", world.admin).body
    assert group["rules"] == [
        {"route": "default", "methods": ["GET", "HEAD"], "paths": ["/reports/**"]}
    ]

    world.make_user("judy", ["reports-read"])
    card.get_by_role("button", name="Edit").click()
    edit = tab.page.get_by_role("dialog", name="Edit group reports-read")
    expect(edit.locator("form")).not_to_contain_text("null")
    edit.get_by_role("button", name="Cancel").click()
    card.get_by_role("button", name="Delete…").click()
    tab.page.get_by_role("dialog", name="Delete group reports-read?").get_by_role(
        "button", name="Delete group"
    ).click()
    force = tab.page.get_by_role("dialog", name="reports-read is in use")
    expect(tab.page.get_by_role("alert")).to_contain_text("in use")
    force.get_by_role("button", name="Delete anyway").click()
    expect(card).to_have_count(0)
    assert world.call("GET", "/groups/reports-read", world.admin).status == 404


def test_console_audit_pages_and_filters(tab: Tab, world: World) -> None:
    world.make_user("kate", ["self-service", "default"])
    _, key = world.make_key("kate", ["default"], name="kate-app")
    tab.sign_in(world.admin)
    tab.page.get_by_role("link", name="Audit").click()
    rows = tab.page.locator("table.audit tbody tr")
    expect(rows.first).to_be_visible()
    tab.page.get_by_label("Target", exact=True).fill(key["id"])
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("key.create")
    tab.page.get_by_label("Target", exact=True).fill("")
    tab.page.get_by_label("Actor").fill("nobody-did-this")
    expect(tab.page.get_by_text("No audit records match.")).to_be_visible()


# --- how it looks -------------------------------------------------------------------
def shots_dir(tmp_path: Path) -> Path:
    target = os.environ.get("KEYGATE_SCREENSHOTS")
    path = Path(target) if target else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def no_sideways_scroll(tab: Tab) -> None:
    width = tab.page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= tab.page.viewport_size["width"], width


@pytest.fixture(scope="module")
def showcase(world: World) -> dict[str, Any]:
    """Keys a person would have: several owners, an avatar, a blocked key, an expiry."""
    world.make_user("lena", ["self-service", "default"])
    _, blocked = world.make_key(
        "admin", ["default"], name="billing-sync", description="Nightly invoices", expires_in="90d"
    )
    world.call("PATCH", f"/keys/{blocked['id']}", world.admin, {"status": "disabled"})
    world.make_key("lena", ["default"], name="lena-laptop", description="Local development")
    world.make_key("lena", ["default"], name="reporting", expires_in="7d")
    return {"blocked": blocked}


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_console_screenshots_at_desktop_and_phone_width(
    browser: Any, world: World, showcase: dict[str, Any], tmp_path: Path, scheme: str
) -> None:
    out = shots_dir(tmp_path)
    suffix = "" if scheme == "light" else "-dark"
    for width, height, tag in ((1280, 860, ""), (390, 844, "-phone")):
        context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=world.url)
        try:
            tab = open_tab(context, world)
            tab.sign_in(world.admin)
            tab.page.get_by_role("link", name="billing-sync").first.wait_for()
            no_sideways_scroll(tab)
            tab.page.screenshot(
                path=str(out / f"console-keys{tag}{suffix}.png"), full_page=tag != ""
            )
            if tag == "":
                tab.page.get_by_role("button", name="Create key").click()
                dialog = tab.page.get_by_role("dialog")
                dialog.get_by_label("Name").fill(f"shop-frontend{suffix}")
                dialog.get_by_label("Description").fill("Checkout page")
                dialog.get_by_role("button", name="Create key").click()
                dialog.get_by_label("Your new API key").wait_for()
                tab.page.screenshot(path=str(out / f"console-create-token{suffix}.png"))
                dialog.get_by_role("button", name="I have stored it").click()
            tab.page.goto(world.console + "#/users/lena")
            tab.page.get_by_role("link", name="lena-laptop").wait_for()
            no_sideways_scroll(tab)
            tab.page.screenshot(
                path=str(out / f"console-user{tag}{suffix}.png"), full_page=tag != ""
            )
            assert tab.errors == [] and tab.dialogs == []
        finally:
            context.close()
