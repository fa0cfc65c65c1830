"""``keygate keys import`` and ``keys export`` as an operator runs them: real
subprocesses on a real SQLite file (docs/reference.md#imported-keys)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import keygate_env, run_keygate

DATA = Path(__file__).parent.parent / "data" / "imports"
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    env = keygate_env(KEYGATE_STORE_URL=f"sqlite:///{tmp_path}/k.db")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = run_keygate(*args, env=env, cwd=tmp_path)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    assert run("init").returncode == 0
    return run


def ok_json(run: Run, *args: str) -> Any:
    proc = run(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def test_cli_import_kong_then_again_skips(cli: Run) -> None:
    args = ("keys", "import", str(DATA / "key-auths.json"), "--format", "kong",
            "--owner", "admin", "--group", "default")  # fmt: skip
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Imported 3 keys; skipped 0 already present; 0 invalid.\n"
    # Not a terminal: no progress bar, nothing at all on stderr.
    assert proc.stderr == ""
    assert ok_json(cli, *args) == {
        "total": 3, "imported": 0, "skipped": 3, "invalid": [], "over_limit": [],
        "dry_run": False,
    }  # fmt: skip


def test_cli_import_invalid_lines_exit_1_with_reasons(cli: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"key,name\nfine-key-0000000001,a\nshort,b\nfine-key-0000000001,c\n")
    proc = cli("keys", "import", str(bad), "--format", "csv", "--owner", "admin", "--json")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: invalid: Nothing imported: 2 invalid lines (of 3 keys read); fix them and "
        "run again.",
        "  line 3: the key is shorter than 16 characters",
        "  line 4: the same key as line 2",
    ]
    listed = ok_json(cli, "keys", "list")
    assert [k["name"] for k in listed["items"]] == ["admin"]


def test_cli_import_dry_run_and_limits_report(cli: Run, tmp_path: Path) -> None:
    many = tmp_path / "many.jsonl"
    many.write_text("".join(f'{{"key": "dry-run-key-{i:08d}"}}\n' for i in range(12)))
    proc = cli("keys", "import", str(many), "--format", "json", "--owner", "admin", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        "Would import 12 keys; skipped 0 already present; 0 invalid."
    )
    assert "admin would hold 13 keys, above auth.max_keys_per_user (10)" in proc.stdout
    assert [k["name"] for k in ok_json(cli, "keys", "list")["items"]] == ["admin"]


def test_cli_import_missing_file_and_bad_format(cli: Run, tmp_path: Path) -> None:
    proc = cli("keys", "import", str(tmp_path / "nope.csv"), "--format", "csv")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: invalid: ")
    assert cli("keys", "import", "x", "--format", "yaml").returncode == 2


def test_cli_export_never_writes_a_token_or_digest(cli: Run) -> None:
    assert cli("keys", "import", str(DATA / "api_keys.map"), "--format", "nginx-map",
               "--owner", "admin", "--group", "default").returncode == 0  # fmt: skip
    csv_out = cli("keys", "export", "--format", "csv")
    assert csv_out.returncode == 0, csv_out.stderr
    lines = csv_out.stdout.splitlines()
    assert lines[0] == (
        "id,display,name,owner,groups,status,expires_at,created_at,last_used_at,"
        "description,imported,metadata"
    )
    assert len(lines) == 1 + 6  # the admin's own key and 5 imported
    as_json = ok_json(cli, "keys", "export", "--format", "json")
    assert {r["name"] for r in as_json} >= {"partner-acme", "reporting backup"}
    text = csv_out.stdout + orjson.dumps(as_json).decode()
    for secret in ("9f2c7e1a4b8d3f6a0c5e", "4d9e8b7a6c5f4e3d2c1b", "digest", "webhook"):
        assert secret not in text


def test_cli_import_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    env = keygate_env(KEYGATE_STORE_URL=f"sqlite:///{tmp_path}/k.db")
    assert run_keygate("init", env=env, cwd=tmp_path).returncode == 0
    source = tmp_path / "keys.csv"
    source.write_text("key\n" + "".join(f"terminal-key-{i:08d}\n" for i in range(3000)))
    leader, follower = pty.openpty()
    # A terminal of 100 columns (a fresh pty has none).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    drawn = bytearray()

    def read_terminal() -> None:  # as a terminal would, while the command runs
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end closed: everything is read
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "keygate", "keys", "import", str(source), "--format", "csv",
             "--owner", "admin"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=follower, timeout=120,
            check=False,
        )  # fmt: skip
    finally:
        os.close(follower)
        reader.join(timeout=10)
        os.close(leader)
    assert proc.returncode == 0
    summary = proc.stdout.decode().splitlines()[0]
    assert summary == "Imported 3000 keys; skipped 0 already present; 0 invalid."
    # tqdm's bar on the terminal: the description, the count and the total.
    assert b"importing" in drawn and b"3000/3000" in drawn
