"""The bench still runs: hot-path micro-benchmark, bare forwarder, and a tiny wrk run."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import hotpath
from tests.support.polling import wait_for
from tests.support.raw import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TOOLS = ("/usr/bin/wrk", "/usr/sbin/nginx")
GOOD_KEY = "kg_bench0000000_secret"


def test_hotpath_tiny_iteration_count_positive_microseconds() -> None:
    results = hotpath.measure(number=200, repeat=1)
    assert any(name.startswith("hot path") for name in results)
    assert all(us > 0 for us in results.values()), results


def test_bare_forwarder_at_most_sixty_lines() -> None:
    assert len((BENCH / "bare_forwarder.py").read_text().splitlines()) <= 60


def _get(port: int, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/some/path?q=1", headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def _wait_ready(proc: subprocess.Popen[bytes], port: int, within: float = 10.0) -> None:
    def ready() -> bool:
        assert proc.poll() is None, f"server on port {port} exited with {proc.returncode}"
        try:
            _get(port, {})
        except OSError:
            return False
        return True

    await wait_for(ready, within=within, every=0.05, what=f"port {port} ready")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(5)


async def test_bare_forwarder_one_request_forwarded_to_origin(
    tmp_path: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    digests = tmp_path / "keys.sha256"
    digests.write_text(hashlib.sha256(GOOD_KEY.encode()).hexdigest() + "\n")
    origin_port, bare_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    origin = [sys.executable, str(BENCH / "hello.py"), str(origin_port)]
    bare = [sys.executable, str(BENCH / "bare_forwarder.py"), str(bare_port),
            f"http://127.0.0.1:{origin_port}", str(digests)]
    for argv, port in ((origin, origin_port), (bare, bare_port)):
        with (tmp_path / f"{port}.log").open("wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        servers.append(proc)
        await _wait_ready(proc, port)

    assert _get(bare_port, {"X-API-Key": GOOD_KEY}) == (200, b"hello")
    assert _get(bare_port, {"X-API-Key": GOOD_KEY + "x"})[0] == 401


@pytest.mark.skipif(
    not all(os.access(tool, os.X_OK) for tool in TOOLS),
    reason="wrk and nginx are not installed (apt-get install wrk nginx-light)",
)
def test_run_tiny_bad_checksum_round_prints_table() -> None:
    argv = [sys.executable, str(BENCH / "run.py"), "--rounds", "1", "--duration", "1",
            "--warmup", "0", "--scenarios", "bad-checksum"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "### bad-checksum" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| keygate |")]
    assert rows and "| 100% |" in rows[0], done.stdout


def _run_script(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_lookups_bench_prints_each_way_with_its_ratio() -> None:
    out = _run_script(str(BENCH / "lookups.py"), "--keys", "400", "--batch", "20",
                      "--rounds", "5")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "×" in line]
    assert [r.split(" | ")[0] for r in rows] == [
        "| SQLiteStore, reader thread", "| SQLiteStore, loop reads",
        "| sqlite3 on the loop, one query a key", "| sqlite3 on the loop, one json_each batch",
    ]
    assert rows[0].endswith("| 1.00× |")


def test_scale_model_measures_and_models_the_nodes() -> None:
    out = _run_script(str(BENCH / "scale_model.py"), "--keys", "2000", "--rate", "200",
                      "--seconds", "5", "--resolution", "5", "--cache-sample", "500")
    assert "| 1 | 0 |" in out and "| 2 | 5 |" in out  # measured at 1 and 2 nodes
    model = [line for line in out.splitlines() if line.startswith(("| 1 | 200 |", "| 100 |"))]
    assert len(model) == 2, out
