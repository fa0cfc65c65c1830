"""Run wrk with a generated Lua script and read its result as one JSON line.

Request shapes: ``static`` (one header value, wrk's fast path; optionally a
POSTed JSON body of ``Load.body`` bytes), ``cycle``
(tokens from a file, in order from a random start), ``zipf`` (tokens from a
file, rank k chosen with probability proportional to 1/k^s) and ``paced``
(``cycle`` at ``Load.rate`` requests a second over all connections, so the
latencies are a request's own and not a saturated queue's). Every script
ends with the same ``done()`` that prints ``BENCHJSON {...}``.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import Proc, spawn

WRK = "/usr/bin/wrk"

_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%.0f,"p99":%.0f,"max":%.0f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""

_STATIC = r"""
function init(args)
  if args[1] ~= "" then wrk.headers["X-API-Key"] = args[1] end
  wrk.path = args[2]
  local size = tonumber(args[4]) or 0
  if size > 0 then
    -- A JSON document of exactly `size` bytes, as an API client would POST.
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = '{"data":"' .. string.rep("x", size - 11) .. '"}'
  end
end
"""

_LOAD = r"""
local tokens = {}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local function load(args)
  for line in io.lines(args[1]) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
  wrk.path = args[2]
  math.randomseed(os.time() * 100 + (tid or 0))
end
"""

_CYCLE = _LOAD + r"""
local i = 0
function init(args)
  load(args)
  i = math.random(#tokens)
end
function request()
  i = i % #tokens + 1
  wrk.headers["X-API-Key"] = tokens[i]
  return wrk.format()
end
"""

_ZIPF = _LOAD + r"""
local cdf = {}
function init(args)
  load(args)
  local s, acc = tonumber(args[3]), 0
  for k = 1, #tokens do
    acc = acc + 1 / k ^ s
    cdf[k] = acc
  end
end
function request()
  local u = math.random() * cdf[#cdf]
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  wrk.headers["X-API-Key"] = tokens[lo]
  return wrk.format()
end
"""

# wrk calls delay() before each request on a connection: each of the c
# connections waits c / rate seconds on average, so they offer `rate` a second
# together (a little less: wrk starts the wait once the answer is in). The
# wait is drawn from 0.5-1.5x the mean: a fixed one keeps the connections in
# step, and c requests arriving at once measure the burst, not the request.
_PACED = _CYCLE + r"""
local pace = 0
local cycle_init = init
function init(args)
  cycle_init(args)
  pace = tonumber(args[5])
end
function delay()
  return math.floor(pace * (0.5 + math.random()) + 0.5)
end
"""

SCRIPTS = {"static": _STATIC, "cycle": _CYCLE, "zipf": _ZIPF, "paced": _PACED}


@dataclass(frozen=True)
class Load:
    """What wrk sends: shape, its argument (a token or a token file), path, connections."""

    shape: str
    arg: str
    connections: int
    path: str = "/"
    zipf_s: float = 1.0
    body: int = 0  # static only: POST a JSON body of this many bytes
    rate: int = 0  # paced only: requests a second over all connections


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_scripts(dir_: Path) -> dict[str, Path]:
    out = {}
    for shape, body in SCRIPTS.items():
        path = dir_ / f"wrk_{shape}.lua"
        path.write_text(body + _DONE)
        out[shape] = path
    return out


def start(
    load: Load, url: str, seconds: float, scripts: dict[str, Path], log: Path,
    cpus: set[int] | None,
) -> Proc:
    """wrk against ``url`` (``http://`` or ``https://`` 127.0.0.1 and a port)."""
    argv = [
        WRK, "-t1", f"-c{load.connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(scripts[load.shape]), url,
        "--", load.arg, load.path, str(load.zipf_s), str(load.body),
        str(round(1000 * load.connections / load.rate) if load.rate else 0),
    ]
    return spawn(f"wrk:{url.rpartition(':')[2]}", argv, log, cpus=cpus)


def finish(proc: Proc, seconds: float) -> WrkResult:
    """Wait (bounded) for a wrk started by :func:`start` and parse its result line."""
    try:
        proc.popen.wait(seconds + 60)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait(5)
        raise RuntimeError(f"wrk did not finish in time:\n{proc.tail()}") from None
    text = proc.log.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCHJSON ")), None)
    if proc.popen.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.popen.returncode}):\n{proc.tail()}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50"] / 1000,
        p99_ms=data["p99"] / 1000,
        non2xx=data["status"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
    )
