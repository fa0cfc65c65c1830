"""``keygate keys import`` and ``keys export`` as an operator runs them: real
subprocesses on a real SQLite file (docs/reference.md#imported-keys)."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import orjson
import pytest

from tests.support.processes import Run, cli_runner, keygate_env, ok_json, run_keygate

DATA = Path(__file__).parent.parent / "data" / "imports"


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    run = cli_runner(tmp_path)
    assert run("init").returncode == 0
    return run


def test_cli_import_kong_then_again_skips(cli: Run) -> None:
    args = ("keys", "import", str(DATA / "key-auths.json"), "--format", "kong",
            "--owner", "admin", "--group", "default")  # fmt: skip
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "Imported 3 keys; skipped 0 already present or rolled away; 0 invalid.\n"
    )
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


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# The attack review's files (F4, F7, I7): each refused with its reasons, never a traceback.
HOSTILE = [
    ("json", _nested(100_000), ["  line 1: not valid: nests deeper than 62 levels"]),
    ("json", '{"key": "deep-metadata-key-01", "metadata": {"a": ' + _nested(5000) + "}}\n",
     ["  line 1: not valid: nests deeper than 62 levels"]),
    # Deeper than a request's body may nest is refused from a file too.
    ("json", '{"key": "deep-metadata-key-02", "metadata": {"a": ' + _nested(100) + "}}\n",
     ["  line 1: a key record nests deeper than 62 levels"]),
    ("kong", '{"data": [{"key": "kong-deep-tags-0001", "tags": ' + _nested(3000) + "}]}",
     ["  file: not valid: nests deeper than 62 levels"]),
    ("kong", '{"data": [{"key": "kong-deep-tags-0002", "tags": ' + _nested(100) + "}]}",
     ["  line 1 (credential 1): a credential nests deeper than 62 levels"]),
    ("kong", '{"data":[{"key":"KongTtlKey000003","ttl":300000000000}]}',
     ["  line 1 (credential 1): ttl must be at most 3153600000 seconds (100 years)"]),
    ("kong", '{"data":[{"key":"KongTtlKey000004","ttl":99999999999999999999}]}',
     ["  line 1 (credential 1): ttl must be at most 3153600000 seconds (100 years)"]),
    ("kong", '{"data":[{"key":null},{"nokey":1},"str"]}', [
        "  line 1 (credential 1): no key",
        "  line 1 (credential 2): no key",
        "  line 1 (credential 3): a credential must be a JSON object",
    ]),
    ("kong", '{"data":[{"key":"kong-twice-key-0001"},{"key":"kong-twice-key-0001"}]}',
     ["  line 1 (credential 2): the same key as line 1 (credential 1)"]),
    ("json", '[{"key":null},{"nokey":1},{"key":"json-twice-key-001"},{"key":"json-twice-key-001"}]',
     ["  line 1 (record 1): no key", "  line 1 (record 2): unknown field 'nokey'",
      "  line 1 (record 4): the same key as line 1 (record 3)"]),
    # nginx reads entries, not lines: two on one line are listed together.
    ("nginx-map", '"short1" a; "short2" b;\n',
     ["  line 1: the key is shorter than 16 characters; the key is shorter than 16 characters"]),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "text", "reasons"), HOSTILE)
def test_cli_import_hostile_files_named_not_crashed(
    cli: Run, tmp_path: Path, fmt: str, text: str, reasons: list[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    proc = cli("keys", "import", str(bad), "--format", fmt, "--owner", "admin", "--dry-run")
    assert proc.returncode == 1
    first, *listed = proc.stderr.splitlines()
    n = len(reasons)
    assert first.startswith(f"error: invalid: Nothing imported: {n} invalid line"), first
    assert listed == reasons


def test_cli_import_dry_run_and_limits_report(cli: Run, tmp_path: Path) -> None:
    many = tmp_path / "many.jsonl"
    many.write_text("".join(f'{{"key": "dry-run-key-{i:08d}"}}\n' for i in range(12)))
    proc = cli("keys", "import", str(many), "--format", "json", "--owner", "admin", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        "Would import 12 keys; skipped 0 already present or rolled away; 0 invalid."
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


def test_cli_export_csv_neutralises_formulas_and_import_keeps_cells(
    cli: Run, tmp_path: Path
) -> None:
    """Cells a spreadsheet would evaluate start with ' in the export (OWASP CSV
    injection); the importer reads every cell exactly as written."""
    sheet = tmp_path / "inject.csv"
    sheet.write_text(
        "key,name,description\n"
        'InjectKey0000001,"=HYPERLINK(""http://x"")",=cmd|\'/c calc\'!A1\n'
        "+InjectKey000002,@SUM(1),-1\n"
        "InjectKey0000003,+1,\"\tTAB first\"\n"
        "InjectKey0000004,'=quoted,'-already\n"
    )
    assert cli("keys", "import", str(sheet), "--format", "csv", "--owner", "admin",
               "--group", "default").returncode == 0  # fmt: skip
    by_name = {k["name"]: k for k in ok_json(cli, "keys", "export", "--format", "json")}
    # Nothing un-escaped on the way in: a leading ' is part of the cell.
    assert by_name["'=quoted"]["description"] == "'-already"
    assert by_name["@SUM(1)"]["display"] == "…0002"
    exported = cli("keys", "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    cells = {(r["name"], r["description"]) for r in rows}
    assert cells >= {
        ("'=HYPERLINK(\"http://x\")", "'=cmd|'/c calc'!A1"),
        ("'@SUM(1)", "'-1"),
        ("'+1", "'\tTAB first"),
        ("'=quoted", "'-already"),  # starts with ', not a formula: as it is
    }
    for r in rows:
        for value in r.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), r


def test_cli_import_csv_duplicate_column_refused(cli: Run, tmp_path: Path) -> None:
    for header in ("key,key,name", "key,name,Name"):
        sheet = tmp_path / "dup.csv"
        sheet.write_text(f"{header}\nDupColumnKey0001,DupColumnKey0002,x\n")
        proc = cli("keys", "import", str(sheet), "--format", "csv", "--owner", "admin")
        assert proc.returncode == 1
        twice = header.split(",")[1].lower()
        assert proc.stderr.splitlines()[1:] == [
            f"  line 1: the header names the column '{twice}' twice"
        ]
    # Blank header cells (a spreadsheet's unused columns) are not columns.
    sheet.write_text("key,name,,\nBlankColumnsKey01,ok,,\n")
    proc = cli("keys", "import", str(sheet), "--format", "csv", "--owner", "admin", "--dry-run")
    assert proc.returncode == 0, proc.stderr


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
    assert summary == (
        "Imported 3000 keys; skipped 0 already present or rolled away; 0 invalid."
    )
    # tqdm's bar on the terminal: the description, the count and the total.
    assert b"importing" in drawn and b"3000/3000" in drawn
