"""schemathesis against a real keygate: the admin API must do what its OpenAPI
document says, for an admin and for a self-service member.

``st run`` (schemathesis 4, a test dependency) runs in its own process against
the keygate app this test serves on 127.0.0.1 with a SQLite store in
``tmp_path``: every phase (examples, coverage, fuzzing, stateful with the links
it infers) and every check (``--checks all``), deterministic generation, a
bounded number of examples. tests/admin/schemathesis.toml holds the few
per-operation settings, each with its reason; tests/admin/schemathesis_hooks.py
keeps the fuzzer's own identity working while the fuzzer revokes keys.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from keygate.admin.routes import ENDPOINTS
from tests.support.admin import PREFIX
from tests.support.gateway import GatewayFactory, default_route
from tests.support.upstreams import Recorder

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MAX_KEYS = 100_000  # the fuzzer creates keys freely; key_limit_reached is tested elsewhere
MAX_EXAMPLES = 25
RUN_TIMEOUT = 120.0  # seconds; a run takes well under half of it
PHASES = ("Examples", "Coverage", "Fuzzing", "Stateful")


async def run_schemathesis(base: str, store: Path, role: str, reports: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGATE_", "SCHEMATHESIS_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        SCHEMATHESIS_HOOKS="tests.admin.schemathesis_hooks",
        KEYGATE_FUZZ_URL=base,
        KEYGATE_FUZZ_STORE=str(store),
        KEYGATE_FUZZ_ROLE=role,
        KEYGATE_FUZZ_MAX_KEYS=str(MAX_KEYS),
        NO_COLOR="1",
        COLUMNS="120",
    )
    argv = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{base}/openapi.json",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers", "1",
        "--no-color",
        "--report", "junit",
        "--report-dir", str(reports),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=reports,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.parametrize("role", ["admin", "member"])
async def test_schemathesis_finds_nothing(
    keygate_factory: GatewayFactory, upstream: Recorder, tmp_path: Path, role: str
) -> None:
    kg = await keygate_factory(default_route(upstream.url), max_keys_per_user=MAX_KEYS)
    store = Path(kg.settings.store.url.removeprefix("sqlite:///"))
    base = str(kg.client.make_url(PREFIX))
    reports = tmp_path / "schemathesis"
    reports.mkdir()
    code, out = await run_schemathesis(base, store, role, reports)
    (reports / "output.txt").write_text(out)
    report = f"{reports / 'output.txt'}\n{out[-12000:]}"
    assert code == 0, report
    # It really ran: every operation, every phase (none skipped), links followed.
    for phase in PHASES:
        assert re.search(rf"✅ {phase}\b", out), (phase, report)
    covered = re.search(r"API Links:\s+(\d+) covered", out)
    assert covered is not None and int(covered.group(1)) > 0, report
    assert operations_tested(reports) == documented_operations(), report


def documented_operations() -> set[str]:
    # schemathesis leaves out the operation that serves the document it tests.
    return {f"{ep.method} {ep.path}" for ep in ENDPOINTS if ep.path != "/openapi.json"}


def operations_tested(reports: Path) -> set[str]:
    (junit,) = reports.glob("junit*.xml")
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    return {str(case.get("name")) for case in cases} - {"Stateful tests"}
