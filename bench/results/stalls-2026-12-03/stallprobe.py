"""One worker, skewed traffic at a fixed rate: p99, the event loop's stretches and the collector's passes.

``PYTHONPATH=. python bench/results/stalls-2026-12-03/stallprobe.py RATE SECONDS RUNS`` from
the repository root (the code before: the same from a git worktree, PYTHONPATH pointing at
it; add ``bench/results/stalls-2026-12-03/site`` to PYTHONPATH and set STALL_LOG=PATH for a
census of the stretches, site/sitecustomize.py): one broker, one worker pinned as the bench
pins it, with the soak's rule, expiry and cache; 10 s as fast as it goes, then RUNS runs of
SECONDS at RATE req/s of bench.loadgen's skewed traffic. Per run: wrk's p50/p99, how many of
the worker's 50 ms loop-lag probes woke late by more than 1, 5, 10... ms, and the time it
spent in the garbage collector with its full passes.
"""
import re, sys, time
from bench.run import Bench, Config
from bench import soak
from bench.tools import pin
cfg = Config(out=__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
b = Bench(cfg)
b.start_broker()
LAG = re.compile(r'^bucketstream_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)
def lag(w):
    _, _, body = w.request("GET", "/metrics", timeout=30)
    return {le: float(v) for le, v in LAG.findall(body.decode())}
try:
    p = b.pool("sp", capacity=soak.CAPACITY, rate=soak.RATE, expire_after=soak.EXPIRE_AFTER,
               expire_check_interval=soak.EXPIRE_CHECK, cache_keys=soak.CACHE_KEYS)
    w, = p.start(1)
    pin(w.proc.pid, b.server_cpus)
    heavy = b.prefix("heavy")
    cal = b.wrk(w.port, "x", "skewed", 10, 0.0, False, prefix=heavy, seed=1)
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 0.35 * cal.rps
    print(f"max {cal.rps:.0f}; offering {rate:.0f}", flush=True)
    for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
        a = lag(w); g0 = soak.gc_pauses(w)
        r = b.wrk(w.port, "x", "skewed", float(sys.argv[2]) if len(sys.argv) > 2 else 60, rate, False, prefix=heavy, seed=i + 2)
        z = lag(w); g1 = soak.gc_pauses(w)
        d = {le: z[le] - a.get(le, 0) for le in z}
        tot = d["+Inf"]
        cum = "  ".join(f">{float(le)*1e3:g}ms:{tot - n:.0f}" for le, n in d.items() if le != "+Inf")
        print(f"run {i}: {r.rps:.0f} req/s p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms; loop probes {tot:.0f}: {cum}; GC {1e3*(g1['seconds']-g0['seconds']):.0f} ms, {g1['full']-g0['full']} full passes", flush=True)
finally:
    for p in list(b.pools): b.stop_pool(p)
    b.broker.stop()
