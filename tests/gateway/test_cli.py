"""The ``keygate`` CLI as a user runs it: a real subprocess against a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.processes import TOKEN_RE, Run, cli_runner, ok_json


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    return cli_runner(tmp_path)


def refused(run: Run, *args: str, code: str) -> str:
    proc = run(*args)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith(f"error: {code}: "), proc.stderr
    return proc.stderr


def test_cli_init_json_then_again_refused_with_admin_exists(cli: Run) -> None:
    doc = ok_json(cli, "init")
    assert set(doc) == {"user", "key", "token"}
    assert doc["user"]["username"] == "admin"
    assert doc["user"]["role"] == "admin"
    assert doc["key"]["name"] == "admin"
    assert doc["key"]["groups"] == ["admin"]
    assert doc["key"]["owner"]["username"] == "admin"
    assert TOKEN_RE.fullmatch(doc["token"])
    assert doc["key"]["display"].endswith(doc["token"][-4:])

    refused(cli, "init", "--json", code="admin_exists")


def test_cli_init_human_prints_token_once_on_stdout(cli: Run) -> None:
    proc = cli("init")
    assert proc.returncode == 0, proc.stderr
    assert len(TOKEN_RE.findall(proc.stdout)) == 1
    assert "once" in proc.stdout
    assert not TOKEN_RE.search(proc.stderr)


def test_cli_keys_round_trip_with_json(cli: Run) -> None:
    ok_json(cli, "init")
    created = ok_json(
        cli,
        "keys",
        "create",
        "--group",
        "default",
        "--name",
        "svc",
        "--expires-in",
        "7d",
        "--metadata",
        '{"team": "a"}',
    )
    key, token = created["key"], created["token"]
    assert TOKEN_RE.fullmatch(token) and token.split("_")[1] == key["id"]
    assert (key["name"], key["status"], key["groups"]) == ("svc", "active", ["default"])
    assert key["owner"]["username"] == "admin" and key["expires_at"] is not None
    assert key["metadata"] == {"team": "a"}
    kid = key["id"]

    # Duplicate name for the same owner, case-insensitively.
    refused(cli, "keys", "create", "--group", "default", "--name", "SVC", code="name_taken")

    # --json accepted before the subcommand as well as after it.
    listed = ok_json(cli, "--json", "keys", "list", "--search", "svc")
    assert [k["id"] for k in listed["items"]] == [kid]
    assert listed["next_cursor"] is None
    assert token not in orjson.dumps(listed).decode()

    table = cli("keys", "list")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "DISPLAY", "NAME", "STATUS"]
    assert kid in table.stdout and not TOKEN_RE.search(table.stdout)

    assert ok_json(cli, "keys", "show", kid)["id"] == kid
    assert ok_json(cli, "keys", "disable", kid)["status"] == "disabled"
    assert ok_json(cli, "keys", "enable", kid)["status"] == "active"

    rolled = ok_json(cli, "keys", "roll", kid, "--grace-seconds", "60")
    assert rolled["key"]["id"] == kid
    assert TOKEN_RE.fullmatch(rolled["token"]) and rolled["token"] != token

    assert ok_json(cli, "keys", "revoke", kid)["status"] == "revoked"
    refused(cli, "keys", "enable", kid, code="key_revoked")

    assert ok_json(cli, "keys", "delete", kid) == {"id": kid, "deleted": True}
    refused(cli, "keys", "show", kid, code="not_found")


def test_cli_users_and_groups_round_trip(cli: Run, tmp_path: Path) -> None:
    ok_json(cli, "init")
    (tmp_path / "rules.toml").write_text(
        '[[rules]]\nroute = "billing"\nmethods = ["GET", "HEAD"]\npaths = ["/billing/**"]\n'
    )
    group = ok_json(cli, "groups", "create", "billing-read", "--rules-file", "rules.toml")
    assert group["rules"] == [
        {"route": "billing", "methods": ["GET", "HEAD"], "paths": ["/billing/**"]}
    ]
    user = ok_json(cli, "users", "create", "alice", "--group", "billing-read")
    assert (user["username"], user["role"], user["groups"]) == ("alice", "member", ["billing-read"])
    key = ok_json(cli, "keys", "create", "--group", "billing-read", "--owner", "alice")["key"]

    refused(cli, "groups", "delete", "billing-read", code="group_in_use")

    deleted = ok_json(cli, "users", "delete", "alice")
    assert deleted == {"username": "alice", "deleted": True, "revoked_keys": [key["id"]]}


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ("[server\nlisten = 1\n", ["keygate.toml", "TOML"]),
        ("[server]\nlisten_on = '1.2.3.4:80'\n", ["keygate.toml", "server.listen_on"]),
        ("[auth]\ncache_size = 'big'\n", ["keygate.toml", "auth.cache_size"]),
    ],
    ids=["invalid-toml", "unknown-setting", "bad-value"],
)
def test_cli_bad_config_file_exits_2_with_one_line(
    cli: Run, tmp_path: Path, content: str, names: list[str]
) -> None:
    (tmp_path / "keygate.toml").write_text(content)
    proc = cli("keys", "list", "--config", "keygate.toml")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("keygate: config error: ")
    assert all(name in lines[0] for name in names), lines[0]


def test_cli_serve_bad_upstream_exits_2_before_serving(cli: Run) -> None:
    proc = cli("serve", "--upstream", "ftp://example.org")
    assert proc.returncode == 2
    assert proc.stderr.startswith("keygate: config error: ") and "--upstream" in proc.stderr


def test_cli_migrate_is_idempotent(cli: Run) -> None:
    first = ok_json(cli, "migrate")["applied"]
    assert first and first == sorted(first)
    assert ok_json(cli, "migrate") == {"applied": []}


@pytest.mark.parametrize(
    "args",
    [["keys", "create", "--name", "no-group"], ["keys", "frobnicate"], ["users", "update", "x"]],
    ids=["missing-required", "unknown-command", "nothing-to-change"],
)
def test_cli_bad_usage_exits_2(cli: Run, args: list[str]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert "usage: keygate" in proc.stderr
