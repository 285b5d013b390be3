"""The same comparison at the C level: perf on the worker during a hot and a unique max-load run, with the
worker's CPU seconds and garbage-collector time (bucketstream_gc_pause_seconds) per request.

``PYTHONPATH=. python bench/results/newuser-default-profile-2026-12-03/perfprobe.py OUT``; the symbol tables in raw/sym-*.txt are ``perf report --no-children -g none --sort sym`` of its two perf runs (perf must be
allowed to attach: perf_event_paranoid <= 2 as the same user).
"""
import re, subprocess, sys, time
from pathlib import Path
from bench.run import Bench, Config, stats
from bench.tools import pin, cpu_seconds

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
cfg = Config(out=out)
b = Bench(cfg)


def gc_seconds(w) -> dict:
    body = w.request("GET", "/metrics", timeout=30)[2].decode()
    got = {}
    for g in "012":
        m = re.search(r'bucketstream_gc_pause_seconds_sum\{generation="%s"\} (\S+)' % g, body)
        n = re.search(r'bucketstream_gc_pause_seconds_count\{generation="%s"\} (\S+)' % g, body)
        got[g] = (float(m.group(1)) if m else 0.0, float(n.group(1)) if n else 0.0)
    return got


b.start_broker()
try:
    p = b.pool("pp", capacity=1e6, rate=1e6)
    w, = p.start(1)
    pin(w.proc.pid, b.server_cpus)
    b.warm(w.port, "bucketstream")
    b.settle(w)
    for i, scen in enumerate(["hot", "unique", "hot", "unique"]):
        perf = None
        if i >= 2:
            perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(w.proc.pid), "-o",
                                     str(out / f"perf-{scen}.data"), "--", "sleep", str(cfg.duration - 1)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        g0, c0 = gc_seconds(w), cpu_seconds(w.proc.pid)
        r = b.wrk(w.port, "bucketstream", scen, record=False, prefix=b.prefix(f"r{i}"), seed=i)
        g1, c1 = gc_seconds(w), cpu_seconds(w.proc.pid)
        if perf:
            perf.wait(60)
        n = max(1, r.requests)
        gcus = {g: round((g1[g][0] - g0[g][0]) / n * 1e6, 2) for g in "012"}
        passes = {g: int(g1[g][1] - g0[g][1]) for g in "012"}
        print(f"{i} {scen}{' (perf)' if perf else ''}: {r.rps:.0f} req/s, worker CPU {(c1 - c0) / n * 1e6:.1f} us/req,"
              f" collector us/req by generation {gcus}, passes {passes}, cached {stats(w)['cached_keys']}", flush=True)
        time.sleep(1)
finally:
    for p in list(b.pools):
        b.stop_pool(p)
    b.broker.stop()
