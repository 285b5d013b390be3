"""The load generator: Debian's ``wrk`` (C, one thread) with a Lua script.

The script makes every request a ``POST /protected`` with an ``X-User-ID``:

* ``unique``: a new user for every request (``<prefix><n>``, n = 1, 2, ...;
  with ``space`` > 0 the users cycle through ``space`` distinct ids, and the
  run stops after ``limit`` requests when ``limit`` > 0);
* ``hot``: the same user for every request;
* ``skewed``: a few heavy users and a long tail of light ones: user
  ``floor(space ^ u)`` for a uniform ``u`` (``space`` 1,000,000 by default), so
  user n is drawn with probability about ``1 / (n ln space)`` (Zipf, s = 1): user 1
  sends 5 % of the requests, users 1-10 17 %, and half of them go to users
  above 1,000, most of whom are seen once or a few times. ``seed`` seeds the draw.

Fixed offered load: wrk has no rate option (wrk2 is not packaged), so the
script paces requests itself: ``delay()`` hands each request the next slot of
a fixed schedule (one every ``1/rate`` s, clock from LuaJIT's FFI). While the
server keeps up, the offered load is exactly ``rate``; when it does not, the
schedule falls behind, requests go back to back and the achieved rate stays
below the offered one: the run is reported as *saturated* (wrk, a closed
loop, measures latency from the actual send, so a saturated run's latency
hides the queueing a real open-loop client would see).
"""

from __future__ import annotations

import bisect
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local mode, prefix, space, limit, floor, random
local counter = 0
local interval = 0
local next_slot = nil
local hot_request = nil

function init(args)
  mode = args[1]
  local rate = tonumber(args[2])
  prefix = args[3]
  space = tonumber(args[4])
  limit = tonumber(args[5])
  if mode == "skewed" then
    if space <= 0 then space = 1000000 end
    math.randomseed(tonumber(args[6]))
    floor, random = math.floor, math.random
  end
  hot_request = wrk.format("POST", "/protected", {["X-User-ID"] = prefix .. "hot"}, "")
  if rate > 0 then
    interval = 1000 / rate
    delay = function()
      local t = now_ms()
      if next_slot == nil then next_slot = t end
      local slot = next_slot
      next_slot = next_slot + interval
      if slot <= t then return 0 end
      return slot - t
    end
  end
end

function request()
  counter = counter + 1
  if limit > 0 and counter > limit then
    wrk.thread:stop()
  end
  if mode == "hot" then return hot_request end
  local n = counter
  if mode == "skewed" then
    n = floor(space ^ random())
  elseif space > 0 then
    n = (counter - 1) % space + 1
  end
  return wrk.format("POST", "/protected", {["X-User-ID"] = prefix .. n}, "")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
  -- done() runs in wrk's main Lua state, which init() never saw: the ask comes by the environment
  if os.getenv("BENCH_GRID") == "1" then
    -- the latency at each percentile of GRID (below): what pooled_percentile needs to pool runs
    local out = {}
    for k = 1, 49 do out[#out + 1] = latency:percentile(k) end
    for k = 500, 899 do out[#out + 1] = latency:percentile(k / 10) end
    for k = 9000, 9999 do out[#out + 1] = latency:percentile(k / 100) end
    out[#out + 1] = latency:percentile(99.999)
    io.write("BENCH_GRID [" .. table.concat(out, ",") .. "]\n")
  end
end
"""

#: The percentiles at which a run asked for its ``grid`` reports its latency: every 1 below 50,
#: every 0.1 to 90, every 0.01 from 90 to 99.99, where the tail's percentiles are pooled.
GRID = ([float(k) for k in range(1, 50)] + [k / 10 for k in range(500, 900)]
        + [k / 100 for k in range(9000, 10000)] + [99.999])
#: GRID in thousandths of a percent, so that pooling counts requests in integers: a sum of
#: float shares can fall an ulp short of p and step past the exact answer
_GRID_MILLI = [round(g * 1000) for g in GRID]


@dataclass
class Run:
    """One wrk run: what was asked and what came back."""

    target: str
    scenario: str  # unique | hot | skewed
    offered: float  # requests/s asked for; 0 = as fast as it goes
    duration: float  # seconds, measured by wrk
    requests: int
    errors: int  # socket errors + timeouts + non-2xx/3xx answers
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    #: latency in µs at each of GRID's percentiles, when asked for (to pool several runs)
    grid: list[int] | None = field(default=None, repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    @property
    def saturated(self) -> bool:
        """A fixed-rate run whose achieved rate fell more than 5 % short of the offer."""
        return self.offered > 0 and self.rps < 0.95 * self.offered

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("grid")
        return {**d, "rps": self.rps, "saturated": self.saturated}


def pooled_percentile(runs: list[Run], p: float) -> float:
    """The ``p``-th percentile in ms of all the requests of ``runs`` together (runs made with
    ``grid``): the least latency at which the runs' distributions, weighted by their requests,
    reach ``p`` %. Each run's distribution is read as a step at GRID's points, never above the
    run's own, so the answer is never below the exact pooled percentile and is above it by at
    most one grid step of each run (0.01 percentile where each run is past its p90)."""
    if any(r.grid is None or len(r.grid) != len(GRID) for r in runs):
        raise ValueError("pooled_percentile needs runs made with grid")
    total = sum(r.requests for r in runs)
    if not total:
        return 0.0

    def reached_at(x: int) -> int:
        # requests × thousandths of a percent: each run at the largest grid percentile whose
        # latency is at most x (0 if none: a lower bound)
        reached = 0
        for r in runs:
            k = bisect.bisect_right(r.grid, x)
            reached += r.requests * (_GRID_MILLI[k - 1] if k else 0)
        return reached

    goal = total * round(p * 1000)
    for x in sorted({v for r in runs for v in r.grid}):
        if reached_at(x) >= goal:
            return x * 1e-3
    return max(r.max_ms for r in runs)


def script_path(workdir: Path) -> Path:
    path = workdir / "bench.lua"
    if not path.exists() or path.read_text() != LUA:
        path.write_text(LUA)
    return path


def wrk(port: int, *, target: str, scenario: str, duration: float, workdir: Path, connections: int = 50,
        rate: float = 0.0, prefix: str = "u", space: int = 0, limit: int = 0, cpus: set[int] | None = None,
        timeout: float = 10.0, seed: int = 1, grid: bool = False) -> Run:
    """Run wrk against 127.0.0.1:``port`` for ``duration`` seconds (one thread)."""
    import os

    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout:g}s",
           "-s", str(script_path(workdir)), f"http://127.0.0.1:{port}/protected",
           "--", scenario, f"{rate:.3f}", prefix, str(space), str(limit), str(seed)]
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    env = {**os.environ, "BENCH_GRID": "1" if grid else "0"}
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=duration + 120, preexec_fn=preexec, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout.strip()[-500:]}")
    r = json.loads(line.removeprefix("BENCH_JSON "))
    ms = 1e-3
    return Run(
        target=target, scenario=scenario, offered=rate, duration=r["duration_us"] / 1e6, requests=r["requests"],
        errors=r["connect"] + r["read"] + r["write"] + r["timeout"] + r["status"], non_2xx=r["status"],
        p50_ms=r["p50_us"] * ms, p90_ms=r["p90_us"] * ms, p99_ms=r["p99_us"] * ms, p999_ms=r["p999_us"] * ms,
        max_ms=r["max_us"] * ms, mean_ms=r["mean_us"] * ms,
        grid=next((json.loads(ln.removeprefix("BENCH_GRID ")) for ln in done.stdout.splitlines()
                   if ln.startswith("BENCH_GRID ")), None) if grid else None,
    )
