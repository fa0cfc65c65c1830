"""The Keys page end to end in real Chromium, as a person uses it (docs/console.md).

One browser and one gateway for the module; each test signs in on a fresh
browser context, so no session or clipboard leaks from one test to the next.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.console.conftest import MAX_KEYS, Tab, World, open_tab

TOKEN_RE = re.compile(r"kg_[0-9a-z]{12}_[0-9A-Za-z]{38}")


def key_row(tab: Tab, name: str) -> Any:
    return tab.page.locator("table.keys tbody tr").filter(
        has=tab.page.get_by_role("link", name=name, exact=True)
    )


def find_key(world: World, name: str) -> dict[str, Any]:
    items = world.call("GET", "/keys", world.admin).body["items"]
    return next(k for k in items if k["name"] == name)


def everything_the_page_holds(tab: Tab) -> str:
    """The page's DOM (attributes and form values included) and both storages."""
    return str(
        tab.page.evaluate(
            """() => {
              const values = [...document.querySelectorAll('input, textarea')].map(e => e.value);
              return [document.documentElement.outerHTML, values.join('\\n'),
                      JSON.stringify({...sessionStorage}), JSON.stringify({...localStorage})]
                     .join('\\n');
            }"""
        )
    )


@pytest.fixture
def avatar_file(tmp_path: Path) -> Path:
    path = tmp_path / "team.png"
    Image.new("RGB", (120, 80), (200, 40, 90)).save(path, format="PNG")
    return path


def test_console_redirects_and_serves_with_its_security_headers(world: World) -> None:
    reply = world.call("GET", "proxy:/_keygate/console")  # urllib follows the 308
    assert reply.status == 200
    page = world.call("GET", "proxy:/_keygate/console/")
    assert page.headers["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Type"].startswith("text/html")
    script = world.call("GET", "proxy:/_keygate/console/app.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    assert world.call("GET", "proxy:/_keygate/console/../openapi.json").status in (400, 404)
    assert world.call("GET", "proxy:/_keygate/console/conftest.py").status == 404


def test_console_sign_in_create_with_every_field_copy_and_use_token(
    tab: Tab, world: World, avatar_file: Path
) -> None:
    world.make_user("carol", ["self-service", "default"])
    tab.sign_in(world.admin)
    page = tab.page
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Owner").select_option("carol")
    expect(dialog.get_by_label("Name")).to_have_value("carol-key-1")  # a suggested default
    dialog.get_by_label("Name").fill("carol-billing")
    dialog.get_by_label("Description").fill("Nightly billing export")
    dialog.get_by_label("default").check()
    dialog.get_by_label("30 days").check()
    dialog.get_by_label("Webhook URL (optional)").fill("https://hooks.example/keygate")
    dialog.get_by_label("Avatar image (optional)").set_input_files(str(avatar_file))
    dialog.get_by_role("button", name="Create key").click()

    token_field = dialog.get_by_label("Your new API key")
    expect(token_field).to_have_value(TOKEN_RE)
    token = token_field.input_value()
    expect(dialog).to_contain_text("only time keygate shows it")
    # A webhook URL brings its signing secret, shown once beside the token.
    webhook_secret = dialog.get_by_label("Webhook signing secret").input_value()
    assert webhook_secret.startswith("whsec_")
    dialog.get_by_role("button", name="Copy", exact=True).click()
    assert page.evaluate("navigator.clipboard.readText()") == token
    page.keyboard.press("Escape")  # the token dialog closes only through "I have stored it"
    expect(token_field).to_be_visible()

    # The token works at the proxy, against the real upstream.
    proxied = world.call("GET", "proxy:/echo/hello", token)
    assert proxied.status == 200
    assert proxied.body["path"] == "/echo/hello"

    dialog.get_by_role("button", name="I have stored it").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_role("status").filter(has_text="carol-billing")).to_be_visible()
    row = key_row(tab, "carol-billing")
    expect(row).to_contain_text("Nightly billing export")
    expect(row).to_contain_text("carol")
    expect(row.locator(".avatar img")).to_be_visible()  # the uploaded avatar, as keygate's PNG
    record = find_key(world, "carol-billing")
    assert record["webhook_url"] == "https://hooks.example/keygate"
    assert record["expires_at"] is not None and record["avatar_url"] is not None
    assert record["groups"] == ["default"] and record["owner"]["username"] == "carol"

    assert token not in everything_the_page_holds(tab)
    assert webhook_secret not in everything_the_page_holds(tab)
    page.reload()
    row.wait_for()
    assert token not in everything_the_page_holds(tab)
    page.evaluate("navigator.clipboard.writeText('')")


def test_console_search_narrows_rows_as_you_type(tab: Tab, world: World) -> None:
    for name in ("search-alpha", "search-beta", "search-gamma"):
        world.make_key("admin", ["default"], name=name)
    tab.sign_in(world.admin)
    rows = tab.page.locator("table.keys tbody tr")
    expect(key_row(tab, "search-beta")).to_have_count(1)
    tab.page.get_by_label("Search keys").press_sequentially("search-b", delay=20)
    expect(rows).to_have_count(1)
    expect(key_row(tab, "search-beta")).to_have_count(1)
    tab.page.get_by_label("Search keys").fill("no-such-key-anywhere")
    expect(tab.page.get_by_role("heading", name="No keys match")).to_be_visible()


def test_console_block_shows_red_dot_and_refuses_at_once_then_unblock(
    tab: Tab, world: World
) -> None:
    token, _ = world.make_key("admin", ["default"], name="blockable")
    assert world.call("GET", "proxy:/echo", token).status == 200
    tab.sign_in(world.admin)
    row = key_row(tab, "blockable")
    switch = row.get_by_role("switch", name="Enabled: blockable")
    expect(switch).to_be_checked()
    expect(row.get_by_test_id("disabled-dot")).to_have_count(0)
    switch.click()
    confirm = tab.page.get_by_role("dialog", name="Block this key?")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Block key").click()
    expect(row.get_by_test_id("disabled-dot")).to_be_visible()
    expect(row.get_by_role("switch")).not_to_be_checked()
    world.wait_status(token, 401, within=1.0)
    assert world.call("GET", "proxy:/echo", token).code == "key_disabled"

    row.get_by_role("switch").click()  # enabling asks nothing
    expect(row.get_by_test_id("disabled-dot")).to_have_count(0)
    world.wait_status(token, 200, within=1.0)


def test_console_cancelled_block_changes_nothing(tab: Tab, world: World) -> None:
    token, _ = world.make_key("admin", ["default"], name="kept-on")
    tab.sign_in(world.admin)
    row = key_row(tab, "kept-on")
    row.get_by_role("switch").click()
    tab.page.get_by_role("dialog", name="Block this key?").get_by_role(
        "button", name="Cancel"
    ).click()
    expect(row.get_by_role("switch")).to_be_checked()
    assert world.call("GET", "proxy:/echo", token).status == 200


def test_console_rename_to_a_taken_name_shows_the_error_at_the_field(
    tab: Tab, world: World
) -> None:
    world.make_key("admin", ["default"], name="taken-name")
    world.make_key("admin", ["default"], name="to-rename")
    tab.sign_in(world.admin)
    row = key_row(tab, "to-rename")
    row.locator("summary").click()
    row.get_by_role("menuitem", name="Edit").click()
    dialog = tab.page.get_by_role("dialog")
    name = dialog.get_by_label("Name")
    name.fill("TAKEN-NAME")
    dialog.get_by_role("button", name="Save changes").click()
    expect(name).to_have_attribute("aria-invalid", "true")
    error_id = name.get_attribute("aria-describedby").split()[-1]
    expect(tab.page.locator(f"#{error_id}")).to_contain_text("already has a key with that name")
    expect(name).to_be_focused()
    name.fill("renamed-ok")
    dialog.get_by_role("button", name="Save changes").click()
    expect(tab.page.get_by_role("dialog")).to_have_count(0)
    expect(key_row(tab, "renamed-ok")).to_have_count(1)


def test_console_create_is_disabled_at_the_key_limit_with_the_reason(
    context: Any, world: World
) -> None:
    world.make_user("full", ["self-service", "default"])
    token, _ = world.make_key("full", ["self-service"], name="console")
    for i in range(MAX_KEYS - 1):
        world.make_key("full", ["default"], name=f"k{i}")
    tab = open_tab(context, world)
    tab.sign_in(token)
    button = tab.page.get_by_role("button", name="Create key")
    expect(button).to_be_disabled()
    expect(tab.page.get_by_text(f"already holds {MAX_KEYS} of {MAX_KEYS} keys")).to_be_visible()
    assert tab.errors == [] and tab.dialogs == []


def test_console_roll_shows_the_new_token_once(tab: Tab, world: World) -> None:
    old, _ = world.make_key("admin", ["default"], name="rollable")
    tab.sign_in(world.admin)
    row = key_row(tab, "rollable")
    row.locator("summary").click()
    row.get_by_role("menuitem", name="Roll…").click()
    dialog = tab.page.get_by_role("dialog")
    dialog.get_by_label("In 1 hour").check()
    dialog.get_by_role("button", name="Roll key").click()
    field = dialog.get_by_label("Your new API key")
    expect(field).to_have_value(TOKEN_RE)
    new = field.input_value()
    assert new != old
    assert world.call("GET", "proxy:/echo", new).status == 200
    assert world.call("GET", "proxy:/echo", old).status == 200  # within its grace hour
    dialog.get_by_role("button", name="I have stored it").click()
    expect(tab.page.get_by_role("dialog")).to_have_count(0)
    assert new not in everything_the_page_holds(tab)


def test_console_revoke_and_delete_ask_first(tab: Tab, world: World) -> None:
    token, _ = world.make_key("admin", ["default"], name="short-lived")
    tab.sign_in(world.admin)
    row = key_row(tab, "short-lived")
    row.locator("summary").click()
    row.get_by_role("menuitem", name="Revoke…").click()
    confirm = tab.page.get_by_role("dialog", name="Revoke this key?")
    expect(confirm).to_contain_text("cannot be undone")
    confirm.get_by_role("button", name="Cancel").click()
    assert world.call("GET", "proxy:/echo", token).status == 200
    row.locator("summary").click()
    row.get_by_role("menuitem", name="Revoke…").click()
    tab.page.get_by_role("dialog", name="Revoke this key?").get_by_role(
        "button", name="Revoke key"
    ).click()
    expect(row.locator(".badge.status-revoked")).to_be_visible()
    assert world.call("GET", "proxy:/echo", token).code == "invalid_api_key"

    row.locator("summary").click()
    row.get_by_role("menuitem", name="Delete…").click()
    confirm = tab.page.get_by_role("dialog", name="Delete this key?")
    expect(confirm).to_contain_text("cannot be undone")
    confirm.get_by_role("button", name="Delete key").click()
    expect(row).to_have_count(0)
    expect(tab.page.get_by_role("status")).to_contain_text("deleted")


def test_console_admin_generates_a_key_on_a_users_page(tab: Tab, world: World) -> None:
    world.make_user("dave", ["self-service", "default"])
    tab.sign_in(world.admin)
    tab.page.get_by_role("link", name="Users").click()
    tab.page.get_by_role("link", name="dave", exact=True).click()
    expect(tab.page.get_by_role("tab", name="API keys")).to_have_attribute("aria-selected", "true")
    expect(tab.page.get_by_role("heading", name="dave has no API keys yet")).to_be_visible()
    tab.page.get_by_role("button", name="Generate key").click()
    dialog = tab.page.get_by_role("dialog", name="New key for dave")
    dialog.get_by_label("Name").fill("dave-laptop")
    dialog.get_by_role("button", name="Create key").click()
    token = dialog.get_by_label("Your new API key").input_value()
    dialog.get_by_role("button", name="I have stored it").click()
    expect(key_row(tab, "dave-laptop")).to_have_count(1)
    assert world.call("GET", "proxy:/echo", token).status == 200
    assert find_key(world, "dave-laptop")["owner"]["username"] == "dave"


def test_console_self_service_sees_only_own_keys_and_no_admin_pages(
    context: Any, world: World
) -> None:
    world.make_user("erin", ["self-service", "default"])
    world.make_user("frank", ["self-service", "default"])
    erin, _ = world.make_key("erin", ["self-service"], name="erin-console")
    world.make_key("erin", ["default"], name="erin-app")
    _, franks = world.make_key("frank", ["default"], name="frank-app")
    tab = open_tab(context, world)
    tab.sign_in(erin)
    page = tab.page
    expect(page.get_by_role("heading", name="My keys")).to_be_visible()
    expect(key_row(tab, "erin-app")).to_have_count(1)
    expect(page.locator("table.keys tbody tr")).to_have_count(2)
    expect(page.get_by_text("frank-app")).to_have_count(0)
    nav = page.get_by_role("navigation", name="Console")
    for admin_page in ("Users", "Groups", "Audit"):
        expect(nav.get_by_role("link", name=admin_page)).to_have_count(0)
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create an API key")
    expect(dialog.get_by_label("Name")).to_have_value("erin-key-3")
    expect(dialog.get_by_label("Owner")).to_have_count(0)  # only admins choose an owner
    expect(dialog.get_by_role("checkbox")).to_have_count(2)  # what erin may hold
    page.keyboard.press("Escape")
    page.goto(world.console + "#/users")
    expect(page.get_by_role("alert")).to_contain_text("admins only")
    expect(page.get_by_role("heading", name="My keys")).to_be_visible()
    # The API still refuses what the page does not show.
    assert world.call("GET", f"/keys/{franks['id']}", erin).status == 404
    assert world.call("PATCH", f"/keys/{franks['id']}", erin, {"name": "x"}).status == 404
    assert world.call("GET", "/users", erin).status == 403
    assert tab.errors == [] and tab.dialogs == []


def test_console_renders_a_hostile_key_name_as_text(tab: Tab, world: World) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    world.make_key("admin", ["default"], name=hostile, description="<b>bold</b>")
    tab.sign_in(world.admin)
    link = tab.page.get_by_role("link", name=hostile, exact=True)
    expect(link).to_have_text(hostile)
    expect(tab.page.get_by_text("<b>bold</b>")).to_be_visible()
    assert tab.page.locator("img[src=x]").count() == 0
    assert tab.page.locator("b", has_text="bold").count() == 0
    link.click()  # the details page renders it as text too
    expect(tab.page.get_by_role("heading", name=hostile)).to_be_visible()
    # The tab fixture fails the test if any alert() or dialog fired.


def test_console_expired_session_returns_to_sign_in_with_the_reason(
    context: Any, world: World
) -> None:
    world.make_user("gina", ["self-service", "default"])
    token, key = world.make_key("gina", ["self-service", "default"], name="gina-console")
    tab = open_tab(context, world)
    tab.sign_in(token)
    world.call("POST", f"/keys/{key['id']}/revoke", world.admin)
    tab.page.get_by_label("Search keys").fill("anything")
    expect(tab.page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    expect(tab.page.get_by_role("alert")).to_contain_text("Your session ended")
    assert tab.page.evaluate("sessionStorage.length") == 0
    tab.page.reload()  # the reason was shown once; the token is gone
    expect(tab.page.get_by_label("API key")).to_have_value("")


def test_console_sign_out_forgets_the_token(tab: Tab, world: World) -> None:
    tab.sign_in(world.admin)
    assert world.admin in tab.page.evaluate("JSON.stringify({...sessionStorage})")
    tab.page.get_by_role("button", name="Sign out").click()
    expect(tab.page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    assert world.admin not in everything_the_page_holds(tab)
    cookies = tab.page.context.cookies()
    assert cookies == []


def test_console_sign_in_refuses_a_bad_key_with_the_reason(tab: Tab, world: World) -> None:
    tab.page.goto(world.console)
    tab.page.get_by_label("API key").fill("kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNT")
    tab.page.get_by_role("button", name="Sign in").click()
    expect(tab.page.get_by_role("alert")).to_contain_text("not valid")


def test_console_create_flow_works_with_the_keyboard_only(tab: Tab, world: World) -> None:
    tab.sign_in(world.admin)
    page = tab.page
    create = page.get_by_role("button", name="Create key")
    create.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    name = dialog.get_by_label("Name")
    expect(name).to_be_focused()
    page.keyboard.type("keyboard-made")
    # Tab through every control to the submit button; focus never leaves the dialog.
    for _ in range(60):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('[role=dialog]') !== null")
        if page.evaluate("document.activeElement.id") == "create-key-submit":
            break
    else:
        raise AssertionError("Tab never reached the Create key button")
    page.keyboard.press("Enter")
    token_field = dialog.get_by_label("Your new API key")
    expect(token_field).to_be_focused()
    token = token_field.input_value()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Copy")).to_be_focused()
    page.keyboard.press("Enter")
    assert page.evaluate("navigator.clipboard.readText()") == token
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="I have stored it")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(key_row(tab, "keyboard-made")).to_have_count(1)
    expect(create).to_be_focused()  # focus returns to where the dialog was opened


def test_console_dialog_closes_on_escape_and_traps_focus(tab: Tab, world: World) -> None:
    tab.sign_in(world.admin)
    tab.page.get_by_role("button", name="Create key").click()
    dialog = tab.page.get_by_role("dialog")
    expect(dialog.get_by_label("Name")).to_be_focused()
    tab.page.keyboard.press("Shift+Tab")
    assert tab.page.evaluate("document.activeElement.closest('[role=dialog]') !== null")
    tab.page.keyboard.press("Escape")
    expect(tab.page.get_by_role("dialog")).to_have_count(0)


def test_console_load_more_follows_next_cursor(tab: Tab, world: World) -> None:
    total = len(world.call("GET", "/keys?limit=500", world.admin).body["items"])
    need, owner = max(0, 55 - total), 0
    while need > 0:
        owner += 1
        world.make_user(f"many{owner}", ["default"])
        for i in range(min(need, MAX_KEYS)):
            world.make_key(f"many{owner}", ["default"], name=f"many-{i:02d}")
        need -= MAX_KEYS
    tab.sign_in(world.admin)
    rows = tab.page.locator("table.keys tbody tr")
    expect(rows).to_have_count(50)
    expect(tab.page.get_by_text("50 keys shown; more below")).to_be_visible()
    tab.page.get_by_role("button", name="Load more").click()
    expect(rows).not_to_have_count(50)
    assert rows.count() > 50
    assert (
        len({rows.nth(i).get_attribute("data-key-id") for i in range(rows.count())}) == rows.count()
    )


def test_console_key_details_show_assigned_and_effective_groups_and_audit(
    tab: Tab, world: World
) -> None:
    world.make_user("hana", ["self-service", "default"])
    _, key = world.make_key("hana", ["default", "self-service"], name="hana-detail")
    world.call("PATCH", "/users/hana", world.admin, {"groups": ["default"]})
    world.call("PATCH", f"/keys/{key['id']}", world.admin, {"description": "changed"})
    tab.sign_in(world.admin)
    tab.page.goto(world.console + f"#/keys/{key['id']}")
    expect(tab.page.get_by_role("heading", name="hana-detail")).to_be_visible()
    expect(tab.page.locator("#assigned-groups")).to_contain_text("self-service")
    expect(tab.page.locator("#effective-groups")).to_contain_text("default")
    expect(tab.page.locator("#effective-groups")).not_to_contain_text("self-service")
    activity = tab.page.locator(
        "section", has=tab.page.get_by_role("heading", name="Recent activity")
    )
    expect(activity).to_contain_text("key.update")
    expect(activity).to_contain_text("key.create")


def test_console_avatar_of_a_key_is_fetched_with_the_token(tab: Tab, world: World) -> None:
    _, key = world.make_key("admin", ["default"], name="pictured")
    png = io.BytesIO()
    Image.new("RGB", (10, 10), (0, 0, 255)).save(png, format="PNG")
    import urllib.request

    request = urllib.request.Request(
        f"{world.url}/_keygate/api/v1/keys/{key['id']}/avatar",
        data=png.getvalue(),
        method="PUT",
        headers={"Authorization": f"Bearer {world.admin}", "Content-Type": "image/png"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    tab.sign_in(world.admin)
    img = key_row(tab, "pictured").locator(".avatar img")
    expect(img).to_have_attribute("src", re.compile(r"^blob:"))
    world.make_key("admin", ["default"], name="plain face")
    tab.page.reload()
    expect(key_row(tab, "plain face").locator(".avatar .initials")).to_have_text("PF")
