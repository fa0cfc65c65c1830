"""The CLI in-process through ``main(argv)``: parsing, rules input, paging, refusals."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from keygate.gateway.cli import main
from keygate.gateway.cli.output import cell
from keygate.gateway.cli.parser import build_parser

TOKEN_RE = re.compile(r"kg_[0-9a-z]{12}_[0-9A-Za-z]{38}")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEYGATE_CONFIG", raising=False)
    monkeypatch.setenv("KEYGATE_STORE_URL", f"sqlite:///{tmp_path}/k.db")

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        if code != 0:
            assert not TOKEN_RE.search(err) and out == ""
        return code, out, err

    return call


def ok(run: Run, *argv: str) -> Any:
    code, out, err = run(*argv, "--json")
    assert code == 0, err
    return orjson.loads(out)


def refused(run: Run, *argv: str, code: str) -> list[str]:
    status, _, err = run(*argv)
    assert status == 1, err
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {code}: "), err
    return lines


@pytest.fixture
def admin(run: Run) -> dict[str, Any]:
    return ok(run, "init")


# --- parsing --------------------------------------------------------------------
def _leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    return [
        leaf
        for name, child in subs[0].choices.items()
        for leaf in _leaf_commands(child, (*prefix, name))
    ]


def test_cli_every_command_has_help_with_an_example(run: Run) -> None:
    leaves = _leaf_commands(build_parser())
    # serve, check-config, init, migrate + 9 keys + 3 key avatar + 4 key webhook
    # + 5 users + 5 groups + audit list, and main's import commands
    assert len(leaves) == 33
    for leaf in leaves:
        code, out, _ = run(*leaf, "--help")
        assert code == 0
        assert "--config" in out and "--json" in out
        assert "example" in out, leaf


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "a.toml", "--json", "keys", "list"],
        ["keys", "--json", "list", "--config", "a.toml"],
        ["keys", "list", "--config", "a.toml", "--json"],
    ],
)
def test_cli_common_options_before_or_after_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.config, args.json) == ("a.toml", True)


def test_cli_common_options_default_when_absent() -> None:
    args = build_parser().parse_args(["keys", "list"])
    assert (args.config, args.json) == (None, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "update", "abc"],
        ["keys", "update", "abc", "--group", "a", "--clear-groups"],
        ["keys", "update", "abc", "--expires-in", "1d", "--no-expiry"],
        ["keys", "create", "--group", "a", "--metadata", "[1]"],
        ["keys", "create", "--group", "a", "--metadata", "{nope"],
        ["keys", "list", "--status", "sleeping"],
        ["keys", "list", "--limit", "0"],
        ["groups", "create", "g", "--rule", "billing GET"],
        ["groups", "create", "g", "--rule", "* * /a", "--rules-file", "r.json"],
        ["groups", "create", "g", "--rules-file", "missing.json"],
        ["users", "create", "bob", "--role", "owner"],
        ["serve", "--workers", "0"],
        [],
    ],
)
def test_cli_bad_usage_exits_2(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert "usage: keygate" in err and out == ""


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("r.yaml", "[]", "ends in .json or .toml"),
        ("r.json", "{not json", "not valid JSON"),
        ("r.json", '{"rules": [], "extra": 1}', "holds a list"),
        ("r.toml", "rules = [", "not valid TOML"),
        ("r.toml", 'name = "x"\n', "only [[rules]]"),
    ],
)
def test_cli_rules_file_unreadable_exits_2(
    run: Run, tmp_path: Path, name: str, content: str, problem: str
) -> None:
    (tmp_path / name).write_text(content)
    code, _, err = run("groups", "create", "g", "--rules-file", name)
    assert code == 2
    assert problem in err


# --- groups and rules ---------------------------------------------------------
RULE = {"route": "billing", "methods": ["GET", "HEAD"], "paths": ["/billing/invoices/**"]}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("r.json", orjson.dumps([RULE]).decode()),
        ("r.json", orjson.dumps({"rules": [RULE]}).decode()),
        (
            "r.toml",
            '[[rules]]\nroute = "billing"\nmethods = ["GET", "HEAD"]\n'
            'paths = ["/billing/invoices/**"]\n',
        ),
    ],
    ids=["json-list", "json-object", "toml"],
)
def test_cli_groups_create_from_rules_file(
    run: Run, admin: dict, tmp_path: Path, name: str, content: str
) -> None:
    (tmp_path / name).write_text(content)
    group = ok(run, "groups", "create", "billing", "--rules-file", name)
    assert group["rules"] == [RULE]


def test_cli_groups_round_trip_with_rule_flags(run: Run, admin: dict) -> None:
    created = ok(
        run,
        "groups",
        "create",
        "billing-read",
        "--description",
        "read",
        "--rule",
        "billing GET,HEAD /billing/invoices/**",
        "--rule",
        "* * /a/*,/b/**",
    )
    assert created["rules"] == [
        RULE,
        {"route": "*", "methods": ["*"], "paths": ["/a/*", "/b/**"]},
    ]
    assert ok(run, "groups", "show", "billing-read")["description"] == "read"
    names = [g["name"] for g in ok(run, "groups", "list")["items"]]
    assert {"admin", "self-service", "default", "billing-read"} <= set(names)

    updated = ok(run, "groups", "update", "billing-read", "--clear-rules")
    assert updated["rules"] == [] and updated["description"] == "read"
    code, out, _ = run("groups", "show", "billing-read")
    assert code == 0 and "rules        none" in out

    refused(run, "groups", "create", "billing-read", code="group_exists")
    refused(run, "groups", "update", "default", "--description", "x", code="forbidden")
    assert ok(run, "groups", "delete", "billing-read") == {"name": "billing-read", "deleted": True}
    refused(run, "groups", "show", "billing-read", code="not_found")


def test_cli_groups_invalid_rules_list_each_detail(run: Run, admin: dict) -> None:
    lines = refused(run, "groups", "create", "g", "--rule", "billing get nope", code="invalid")
    assert "  rules[0].methods[0]: must be an upper-case method or ['*']" in lines
    assert "  rules[0].paths[0]: must start with '/'" in lines


def test_cli_groups_delete_in_use_needs_force(run: Run, admin: dict) -> None:
    ok(run, "groups", "create", "ops", "--rule", "* * /**")
    ok(run, "users", "create", "bob", "--group", "ops")
    refused(run, "groups", "delete", "ops", code="group_in_use")
    ok(run, "groups", "delete", "ops", "--force")
    assert ok(run, "users", "show", "bob")["groups"] == []


# --- users ----------------------------------------------------------------------
def test_cli_users_round_trip(run: Run, admin: dict) -> None:
    user = ok(run, "users", "create", "alice", "--group", "self-service")
    assert (user["role"], user["status"], user["groups"]) == ("member", "active", ["self-service"])
    refused(run, "users", "create", "alice", code="username_taken")
    lines = refused(run, "users", "create", "eve", "--group", "admin", code="invalid")
    assert any(line.startswith("  groups: ") for line in lines)

    changed = ok(run, "users", "update", "alice", "--status", "disabled", "--clear-groups")
    assert (changed["status"], changed["groups"]) == ("disabled", [])
    assert ok(run, "users", "update", "alice", "--role", "admin")["role"] == "admin"

    listed = ok(run, "users", "list")
    assert [u["username"] for u in listed["items"]] == ["admin", "alice"]
    page = ok(run, "users", "list", "--limit", "1")
    assert [u["username"] for u in page["items"]] == ["admin"] and page["next_cursor"]

    code, out, _ = run("users", "list")
    assert code == 0 and out.split()[:5] == ["USERNAME", "ROLE", "STATUS", "GROUPS", "CREATED"]

    refused(run, "users", "delete", "admin", code="last_admin")
    refused(run, "users", "show", "nobody", code="not_found")


# --- keys -------------------------------------------------------------------------
def test_cli_keys_create_needs_an_owner_that_exists(run: Run) -> None:
    lines = refused(run, "keys", "create", "--group", "default", code="invalid")
    assert "  owner: no such user" in lines


def test_cli_keys_list_pages_and_all(run: Run, admin: dict) -> None:
    ids = [ok(run, "keys", "create", "--group", "default")["key"]["id"] for _ in range(3)]
    first = ok(run, "keys", "list", "--limit", "2")
    assert [k["id"] for k in first["items"]] == ids[::-1][:2]
    rest = ok(run, "keys", "list", "--limit", "2", "--cursor", first["next_cursor"])
    assert [k["id"] for k in rest["items"]] == [ids[0], admin["key"]["id"]]

    every = ok(run, "keys", "list", "--all", "--limit", "1")
    assert len(every["items"]) == 4 and every["next_cursor"] is None

    code, out, err = run("keys", "list", "--limit", "1")
    assert code == 0 and "--cursor" in err and "--cursor" not in out


def test_cli_keys_update_fields(run: Run, admin: dict) -> None:
    key = ok(
        run,
        "keys",
        "create",
        "--group",
        "default",
        "--expires-in",
        "1h",
        "--webhook-url",
        "https://hooks.example/k",
    )["key"]
    updated = ok(
        run,
        "keys",
        "update",
        key["id"],
        "--name",
        "renamed",
        "--clear-groups",
        "--no-expiry",
        "--no-webhook-url",
        "--metadata",
        '{"a": 1}',
    )
    assert updated["name"] == "renamed" and updated["groups"] == []
    assert updated["expires_at"] is None and updated["webhook_url"] is None
    assert updated["metadata"] == {"a": 1}
    lines = refused(
        run, "keys", "update", key["id"], "--expires-at", "2001-01-01T00:00:00Z", code="invalid"
    )
    assert "  expires_at: must be in the future" in lines


def test_cli_keys_roll_human_output_shows_new_token_once(run: Run, admin: dict) -> None:
    code, out, err = run("keys", "roll", admin["key"]["id"])
    assert code == 0
    tokens = TOKEN_RE.findall(out)
    assert len(tokens) == 1 and tokens[0] != admin["token"]
    assert not TOKEN_RE.search(err)


def test_cli_store_unavailable_exits_1(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGATE_STORE_URL", "sqlite:////proc/no-such-dir/k.db")
    refused(run, "keys", "list", code="store_unavailable")


def test_cli_environment_config_error_exits_2(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGATE_AUTH_CACHE_SIZE", "lots")
    code, _, err = run("keys", "list")
    assert code == 2
    assert err.startswith("keygate: config error: ") and "KEYGATE_AUTH_CACHE_SIZE" in err


def test_cli_output_cell_strips_terminal_control_characters() -> None:
    assert cell("a\x1b[31mb\nc") == "a [31mb c"
    assert cell(None) == "-" and cell([]) == "-" and cell(["a", "b"]) == "a,b"
    assert cell("abcdef", width=4) == "abc…"


def test_cli_audit_list_shows_cli_changes_newest_first_and_pages(
    run: Run, admin: dict
) -> None:
    ok(run, "users", "create", "alice")
    ok(run, "users", "update", "alice", "--status", "disabled")
    first = ok(run, "audit", "list", "--limit", "2")
    assert [a["action"] for a in first["items"]] == ["user.update", "user.create"]
    assert first["items"][0]["actor"]["username"].startswith("cli:")
    assert first["items"][0]["target"] == {"type": "user", "id": "alice"}
    rest = ok(run, "audit", "list", "--cursor", first["next_cursor"])
    assert rest["items"] and rest["items"][0]["id"] < first["items"][-1]["id"]
    code, out, _ = run("audit", "list")
    assert code == 0 and "user.update" in out and "TOKEN" not in out
    refused(run, "audit", "list", "--cursor", "bogus", code="invalid")


# --- blocks -----------------------------------------------------------------------
def test_keys_disable_records_the_cli_as_disabled_by(run: Run, admin: dict[str, Any]) -> None:
    kid = admin["key"]["id"]
    assert ok(run, "keys", "show", kid)["disabled_by"] is None
    disabled = ok(run, "keys", "disable", kid)
    assert disabled["disabled_by"]["id"] is None
    assert disabled["disabled_by"]["username"].startswith("cli:")
    code, out, _ = run("keys", "show", kid)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("disabled by"))
    assert line.split()[-1] == disabled["disabled_by"]["username"]
    assert ok(run, "keys", "enable", kid)["disabled_by"] is None
    code, out, _ = run("keys", "show", kid)
    assert next(x for x in out.splitlines() if x.startswith("disabled by")).split()[-1] == "-"


# --- limits (docs/reference.md#rate-limits-quotas-and-ip-allowlists) ----------------
def test_cli_keys_limits_round_trip(run: Run, admin: dict) -> None:
    created = ok(
        run,
        "keys", "create", "--group", "default",
        "--rate-limit", "100/60s", "--rate-limit", "burst=20/m:40", "--rate-limit", "10/s",
        "--quota", "100000/day", "--allow-ip", "10.1.2.3/8", "--allow-ip", "::ffff:192.0.2.1",
    )
    key = created["key"]
    assert key["rate_limits"] == [
        {"name": "60s", "limit": 100, "window": 60, "burst": None},
        {"name": "burst", "limit": 20, "window": 60, "burst": 40},
        {"name": "1s", "limit": 10, "window": 1, "burst": None},
    ]
    assert key["quota"] == {"limit": 100000, "period": "day"}
    assert key["quota_used"] == 0
    assert key["allowed_ips"] == ["10.0.0.0/8", "192.0.2.1/32"]
    code, out, _ = run("keys", "show", key["id"])
    assert code == 0
    assert "rate limits  60s=100/60s, burst=20/60s:40, 1s=10/1s" in out
    assert "allowed ips  10.0.0.0/8, 192.0.2.1/32" in out
    cleared = ok(
        run, "keys", "update", key["id"],
        "--clear-rate-limits", "--no-quota", "--clear-allowed-ips",
    )
    assert (cleared["rate_limits"], cleared["quota"], cleared["allowed_ips"]) == ([], None, [])
    changed = ok(run, "keys", "update", key["id"], "--quota", "5/month", "--rate-limit", "1/1h")
    assert changed["quota"] == {"limit": 5, "period": "month"}
    assert changed["rate_limits"] == [{"name": "1h", "limit": 1, "window": 3600, "burst": None}]


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate-limit", "100"],
        ["--rate-limit", "x/60s"],
        ["--rate-limit", "100/60ms"],
        ["--rate-limit", "100/60s:"],
        ["--quota", "100/week"],
        ["--quota", "lots/day"],
    ],
)
def test_cli_keys_bad_limit_syntax_exits_2(run: Run, admin: dict, argv: list[str]) -> None:
    code, _, err = run("keys", "create", "--group", "default", *argv)
    assert code == 2 and "usage:" in err


def test_cli_keys_limits_refused_with_details(run: Run, admin: dict) -> None:
    lines = refused(
        run, "keys", "create", "--group", "default",
        "--rate-limit", "quota=5/1s", "--allow-ip", "10.0.0.0/33", code="invalid",
    )
    assert "  rate_limits: 'quota' names the quota: give the rate limit another name" in lines
    assert (
        "  allowed_ips: item 1: not an IP address or network (CIDR) ('10.0.0.0/33')" in lines
    )


# --- key avatars ----------------------------------------------------------------------
def test_cli_keys_avatar_set_get_delete(run: Run, admin: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    key_id = ok(run, "keys", "create", "--group", "default", "--name", "pic")["key"]["id"]
    source = tmp_path / "in.jpg"
    Image.new("RGB", (64, 48), (10, 200, 10)).save(source, format="JPEG")
    record = ok(run, "keys", "avatar", "set", key_id, str(source))
    assert record["avatar_url"].startswith(f"/_keygate/api/v1/keys/{key_id}/avatar?v=")
    assert ok(run, "keys", "show", key_id)["avatar_url"] == record["avatar_url"]
    target = tmp_path / "out.png"
    got = ok(run, "keys", "avatar", "get", key_id, "--output", str(target))
    assert got["output"] == str(target) and got["bytes"] == target.stat().st_size
    with Image.open(target) as img:
        assert (img.format, img.size) == ("PNG", (256, 256))
    assert ok(run, "keys", "avatar", "delete", key_id) == {"id": key_id, "avatar_url": None}
    assert ok(run, "keys", "show", key_id)["avatar_url"] is None
    refused(run, "keys", "avatar", "get", key_id, "-o", str(target), code="not_found")


def test_cli_keys_avatar_refuses_what_the_api_refuses(
    run: Run, admin: dict[str, Any], tmp_path: Path
) -> None:
    key_id = ok(run, "keys", "create", "--group", "default")["key"]["id"]
    svg = tmp_path / "x.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    lines = refused(run, "keys", "avatar", "set", key_id, str(svg), code="invalid")
    assert lines[1].startswith("  file: ")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024))
    refused(run, "keys", "avatar", "set", key_id, str(big), code="too_large")
    refused(run, "keys", "avatar", "set", key_id, str(tmp_path / "missing.png"), code="invalid")
