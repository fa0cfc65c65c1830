"""Start-up on a store that cannot be used (issue 16): one line naming the store
and SQLite's own reason, exit status 1 within 5 s, no thread left behind; a
stop signal honoured at any moment of start-up; a store from a newer keygate
refused."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keygate.gateway.errors import StoreTooNew, StoreUnavailable
from keygate.gateway.store.sqlite.migrations import SQLITE_SCHEMA
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.processes import keygate_env
from tests.support.raw import free_port
from tests.support.volumes import make_read_only, tiny_volume

pytestmark = pytest.mark.slow

# Every start-up failure ends within this many seconds (the bound).
WITHIN = 5.0

COMMANDS = {
    "serve": ["serve", "--upstream", "http://127.0.0.1:9"],
    "serve_2_workers": ["serve", "--upstream", "http://127.0.0.1:9", "--workers", "2"],
    "init": ["init"],
    "keys_list": ["keys", "list"],
}


def _run(cwd: Path, db: Path, args: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """``keygate *args`` on ``db``; killed (and the test failed) past ``WITHIN`` s."""
    if args[0] == "serve":
        args = [*args, "--listen", f"127.0.0.1:{free_port()}"]
    env = keygate_env(KEYGATE_STORE_URL=f"sqlite:///{db}", PYTHONWARNINGS="error")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keygate", *args],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"keygate {' '.join(args)} still running after {WITHIN} s: {err!r}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err), time.monotonic() - started


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _keygate(cwd: Path, db: Path, *args: str) -> None:
    env = keygate_env(KEYGATE_STORE_URL=f"sqlite:///{db}")
    done = subprocess.run(
        [sys.executable, "-m", "keygate", *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr


def _corrupt_table(db: Path, table: str) -> None:
    """Overwrite the first page of ``table`` with garbage."""
    conn = sqlite3.connect(db)
    try:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_startup_not_a_database_one_line_exit_1(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "notdb.db"
    db.write_bytes(b"this is not an SQLite database, only text " * 100)
    result, _ = _run(tmp_path, db, command)
    line = _one_line(result)
    assert str(db) in line and "file is not a database" in line, line


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_startup_corrupt_keys_table_one_line_exit_1(tmp_path: Path, command: list[str]) -> None:
    # Schema but no admin: serve and init fail creating it, keys list reading.
    db = tmp_path / "k.db"
    _keygate(tmp_path, db, "migrate")
    _corrupt_table(db, "keys")
    result, _ = _run(tmp_path, db, command)
    line = _one_line(result)
    assert str(db) in line and "malformed" in line, line


@pytest.mark.parametrize(
    "command", [COMMANDS["serve"], COMMANDS["serve_2_workers"]], ids=["serve", "serve_2_workers"]
)
def test_startup_corrupt_keys_table_after_the_store_opened_exits(
    tmp_path: Path, command: list[str]
) -> None:
    # An admin exists: preparation passes, the worker's start fails reading the
    # keys after its store opened (its connections were left open, and the
    # process hung, needing SIGKILL).
    db = tmp_path / "k.db"
    _keygate(tmp_path, db, "init")
    _corrupt_table(db, "keys")
    result, _ = _run(tmp_path, db, command)
    line = _one_line(result)
    assert str(db) in line and "malformed" in line, line


@pytest.fixture
def read_only_store(tmp_path: Path) -> Iterator[Path]:
    with tiny_volume(tmp_path / "vol", "4m") as vol:
        _keygate(tmp_path, vol / "k.db", "init")
        make_read_only(vol)
        yield vol / "k.db"


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_startup_read_only_directory_one_line_exit_1(
    tmp_path: Path, read_only_store: Path, command: list[str]
) -> None:
    result, _ = _run(tmp_path, read_only_store, command)
    line = _one_line(result)
    assert str(read_only_store) in line and "unable to open database file" in line, line


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_startup_store_schema_from_newer_keygate_refused(
    tmp_path: Path, command: list[str]
) -> None:
    db = tmp_path / "k.db"
    _keygate(tmp_path, db, "init")
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")
    conn.commit()
    conn.close()
    result, _ = _run(tmp_path, db, command)
    line = _one_line(result)
    newest = SQLITE_SCHEMA.newest
    assert f"store schema 99 is newer than this keygate ({newest})" in line, line


# --- nothing left behind ------------------------------------------------------------
def _store_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}


@pytest.mark.parametrize("case", ["not_a_database", "newer_schema"])
async def test_startup_failed_open_leaves_no_thread(tmp_path: Path, case: str) -> None:
    db = tmp_path / "k.db"
    if case == "not_a_database":
        db.write_bytes(b"not a database " * 200)
        expected: type[Exception] = StoreUnavailable
    else:
        store = SQLiteStore(db)
        await store.open()
        await store.close()
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (7, 0)")
        conn.commit()
        conn.close()
        expected = StoreTooNew
    before = _store_threads()
    with pytest.raises(expected):
        await SQLiteStore(db).open()
    await asyncio.sleep(0.1)
    assert _store_threads() <= before, "an aiosqlite connection thread was left running"


# --- a stop signal during start-up ---------------------------------------------------
WORKER = textwrap.dedent(
    """
    import os, sys
    from keygate.config import load_settings
    from keygate.gateway.cli.serve import serve_worker
    settings = load_settings(None, os.environ, overrides={"server": {"listen": sys.argv[1]}})
    sys.exit(serve_worker(settings, reuse_port=False))
    """
)


def _sigterm_during_start(cwd: Path, db: Path, argv: list[str]) -> tuple[int, str]:
    """Start ``argv`` while another connection holds ``db``'s write lock, send
    SIGTERM once it waits for it; (exit status, stderr), failing past 5 s."""
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    err_path = cwd / "stderr.txt"
    try:
        env = keygate_env(KEYGATE_STORE_URL=f"sqlite:///{db}")
        with err_path.open("w") as err:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stderr=err)
        time.sleep(1.5)  # imported, and waiting for the lock
        assert proc.poll() is None, err_path.read_text()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WITHIN)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"SIGTERM during start-up not honoured within 5 s: {err_path.read_text()}")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    return proc.returncode, err_path.read_text()


def test_startup_sigterm_while_the_worker_waits_for_the_store_exits_within_5s(
    tmp_path: Path,
) -> None:
    # Another process holds the store's write lock: the worker's start waits
    # for it (busy_timeout, 10 s; then it failed and left its connection open,
    # ignoring SIGTERM). A SIGTERM meanwhile ends the process within 5 s.
    db = tmp_path / "k.db"
    _keygate(tmp_path, db, "init")
    code, err = _sigterm_during_start(
        tmp_path, db, [sys.executable, "-c", WORKER, f"127.0.0.1:{free_port()}"]
    )
    assert code == 0, err
    assert "Traceback" not in err


def test_startup_sigterm_while_preparing_the_store_exits_within_5s(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    _keygate(tmp_path, db, "init")
    argv = [sys.executable, "-m", "keygate", *COMMANDS["serve_2_workers"]]
    code, err = _sigterm_during_start(
        tmp_path, db, [*argv, "--listen", f"127.0.0.1:{free_port()}"]
    )
    assert code in (0, -signal.SIGTERM), err
    assert "Traceback" not in err
