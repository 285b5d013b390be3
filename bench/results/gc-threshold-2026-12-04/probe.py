"""Where a new user's request costs more than a hot user's, on a worker with default settings.

``PYTHONPATH=. python bench/results/newuser-default-profile-2026-12-03/probe.py OUT [MODE] [steps=a,b,..]
[SETTING=VALUE ...]`` from the repository root: one broker, one fresh worker pinned as the bench pins it
(``Bench.fresh_worker``, with the worker settings given), the worker phase's rule (C = R = 1,000,000), 10 s
runs at max load. After each run: req/s, update records written, the worker's CPU per request (all threads,
and its main thread's user and system time), wrk's CPU per request, the garbage collector's time per request
(``bucketstream_gc_pause_seconds``) and the cached keys. Scenarios: the bench's ``hot`` and ``unique``, and
``hotbusy``: one hot user, with wrk also building a new user's request each time and sending the hot one
(is it wrk's extra work for new users that slows the worker?). A scenario ending in ``-forget`` runs with the file
``$EXP_FORGET`` present (``timing/sitecustomize.py``). MODE:
- ``spy`` (default): hot, new users, then both under py-spy (``OUT/profile-*.txt``), then both once more;
- ``perf``: hot, new users, then both under ``perf record -g`` (``OUT/perf-*.data``; ``raw/sym-*.txt`` are
  ``perf report --no-children -g none --sort sym`` of them; perf_event_paranoid <= 2 as the same user);
- ``cold``: two fresh workers in turn, each: hot, three runs of new users (the cache fills to its 200,000
  keys in the second or third), hot, new users: is a fresh worker's first run of new users the slow one?
- ``plain``: the ``steps`` given, nothing sampled.
The phase's own profiles ran on the memory worker until 2026-12-03, which publishes every admission
(hold_share 0); these do not.

Records here: ``probe-12-21.txt`` (spy), ``perfprobe-12-24.txt`` (perf) and ``cold-13-03.txt`` (cold) were
printed by earlier versions of this script with the same runs, which printed less (no main-thread or wrk CPU);
``busy-13-15.txt`` is ``plain steps=hot,hotbusy,unique,hot,hotbusy,unique,hot,hotbusy,unique`` and
``cache2000-13-18.txt`` is ``plain steps=hot,unique,hot,unique,hot,unique cache_keys=2000``; ``timing/`` holds
the experiments inside the worker (its ``sitecustomize.py`` says how to run them) and what they printed.
"""
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench import loadgen, profile
from bench.run import Bench, Config, stats
from bench.tools import pin

HOT = 'if mode == "hot" then return hot_request end'
assert HOT in loadgen.LUA, "bench/loadgen.py's script changed: update hotbusy"
loadgen.LUA = loadgen.LUA.replace(HOT, HOT + '\n  if mode == "hotbusy" then local unused = wrk.format("POST", '
                                  '"/protected", {["X-User-ID"] = prefix .. counter}, ""); return hot_request end')

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
args = sys.argv[2:]
mode = args.pop(0) if args and "=" not in args[0] else "spy"
options = dict(a.split("=", 1) for a in args)
steps = {"spy": ["hot", "unique"] * 3, "perf": ["hot", "unique"] * 2,
         "cold": ["hot", "unique", "unique", "unique", "hot", "unique"]}.get(mode)
steps = options.pop("steps").split(",") if "steps" in options else steps
cfg = Config(out=out)
b = Bench(cfg)
TICK = os.sysconf("SC_CLK_TCK")


def gc_seconds(w) -> dict:
    body = w.request("GET", "/metrics", timeout=30)[2].decode()
    got = {}
    for g in "012":
        total = re.search(r'bucketstream_gc_pause_seconds_sum\{generation="%s"\} (\S+)' % g, body)
        count = re.search(r'bucketstream_gc_pause_seconds_count\{generation="%s"\} (\S+)' % g, body)
        got[g] = (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)
    return got


def cpu(pid: int) -> tuple[float, float, float]:
    """(all threads, main thread user, main thread system) seconds of ``pid``; wrk's from our children."""
    def fields(path):
        return open(path).read().rsplit(")", 1)[1].split()
    f = fields(f"/proc/{pid}/stat")
    m = fields(f"/proc/{pid}/task/{pid}/stat")
    return (int(f[11]) + int(f[12])) / TICK, int(m[11]) / TICK, int(m[12]) / TICK


def children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sampler(pid: int, scenario: str, i: int) -> subprocess.Popen:
    if mode == "perf":
        return subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o",
                                 str(out / f"perf-{scenario}.data"), "--", "sleep", str(cfg.duration - 1)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return profile.record(pid, cfg.duration - 1, out / f"profile-{scenario}-{i}.txt")


b.start_broker()
try:
    for rep, gc0 in enumerate(os.environ.get("EXP_GC0S", ",10000,,10000").split(",")):
        os.environ["EXP_GC0"] = gc0
        print(f"worker {rep}: gen0 threshold {gc0 or 'default'}", flush=True)
        with b.fresh_worker(f"pp{rep}", capacity=1e6, rate=1e6, **options) as (app_id, w):
            b.warm(w.port, "bucketstream")
            b.settle(w)
            for i, scenario in enumerate(steps):
                spy = None
                if i in (2, 3) and mode in ("spy", "perf"):
                    spy = sampler(w.proc.pid, scenario, i)
                    pin(spy.pid, b.gen_cpus)
                    time.sleep(0.5)
                forget = scenario.endswith("-forget")
                if forget:
                    Path(os.environ["EXP_FORGET"]).touch()
                    time.sleep(0.5)
                before, g0, c0, k0 = b.kafka_totals(app_id)["updates"], gc_seconds(w), cpu(w.proc.pid), children()
                r = b.wrk(w.port, "bucketstream", scenario.removesuffix("-forget"), record=False, prefix=b.prefix(f"r{i}"), seed=i)
                g1, c1, k1 = gc_seconds(w), cpu(w.proc.pid), children()
                if spy:
                    spy.wait(60)
                if forget:
                    os.unlink(os.environ["EXP_FORGET"])
                time.sleep(1)
                n = max(1, r.requests)
                us = [(c1[j] - c0[j]) / n * 1e6 for j in range(3)]
                records = b.kafka_totals(app_id)["updates"] - before
                gc_us = {g: round((g1[g][0] - g0[g][0]) / n * 1e6, 2) for g in "012"}
                label = f"w{rep}/{gc0 or 700} {i}"
                print(f"{label} {scenario}{' (sampled)' if spy else ''}: {r.rps:.0f} req/s, update records {records}"
                      f" ({records / n:.4f}/req); worker CPU {us[0]:.1f} us/req (main thread user {us[1]:.1f},"
                      f" system {us[2]:.1f}); wrk {(k1 - k0) / n * 1e6:.1f} us/req; collector us/req by generation"
                      f" {gc_us}; cached {stats(w)['cached_keys']}", flush=True)
finally:
    b.cleanup()
