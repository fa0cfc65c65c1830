"""kill -9 in the middle of a 100,000-key import (docs/reference.md#imported-keys):
every key is either wholly present (record, digest, audit record) or absent,
and running the same import again completes it."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keygate.gateway.service.imports.service import BATCH
from tests.support.processes import keygate_env, run_keygate

pytestmark = pytest.mark.slow

KEYS = 100_000


def imported(db: Path) -> tuple[int, int, set[bytes]]:
    """(imported keys, their audit records, their digests), read as another process would."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        digests = {bytes(r[0]) for r in conn.execute("SELECT digest FROM keys WHERE imported = 1")}
        audits = conn.execute("SELECT count(*) FROM audit WHERE action = 'key.import'").fetchone()
    return len(digests), audits[0], digests


def test_import_killed_mid_way_leaves_whole_batches_and_a_rerun_completes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "k.db"
    env = keygate_env(KEYGATE_STORE_URL=f"sqlite:///{db}")
    assert run_keygate("init", env=env, cwd=tmp_path).returncode == 0
    tokens = [f"legacy-client-{i:08d}-key" for i in range(KEYS)]
    source = tmp_path / "keys.csv"
    source.write_text("key,name\n" + "".join(f"{t},client-{i % 1000}\n" for i, t in
                                             enumerate(tokens)))  # fmt: skip
    wanted = {hashlib.sha256(t.encode()).digest() for t in tokens}

    args = ["keys", "import", str(source), "--format", "csv", "--owner", "admin"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "keygate", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Bounded wait for the import to be part-way: at least two batches in.
        deadline = time.monotonic() + 120
        while imported(db)[0] < 2 * BATCH:
            assert proc.poll() is None, "the import finished before it could be killed"
            assert time.monotonic() < deadline, "the import never got going"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    count, audits, digests = imported(db)
    assert 0 < count < KEYS
    assert count % BATCH == 0  # whole batches only
    assert audits == count  # each key's audit record with it
    assert digests <= wanted

    again = run_keygate(*args, env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == (
        f"Imported {KEYS - count} keys; skipped {count} already present; 0 invalid."
    )
    count, audits, digests = imported(db)
    assert (count, audits) == (KEYS, KEYS)
    assert digests == wanted
