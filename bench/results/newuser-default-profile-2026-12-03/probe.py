"""Where a new user's request costs more than a hot user's, on a worker with default settings.

``PYTHONPATH=. python bench/results/newuser-default-profile-2026-12-03/probe.py OUT`` from the repository
root: one broker, one fresh worker pinned as the bench pins it, the worker phase's rule (C = R = 1,000,000);
hot max, unique max, then hot and unique again each under py-spy, then hot and unique once more. After each
run: req/s, update records written, and the worker's key counts. The phase's own profiles run on the memory
worker, which publishes every admission (hold_share 0); these do not.
"""
import sys, time
from pathlib import Path
from bench.run import Bench, Config, stats
from bench.tools import pin
from bench import profile

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
cfg = Config(out=out)
b = Bench(cfg)
b.start_broker()
try:
    p = b.pool("pp", capacity=1e6, rate=1e6)
    w, = p.start(1)
    pin(w.proc.pid, b.server_cpus)
    b.warm(w.port, "bucketstream")
    b.settle(w)
    steps = [("hot", None), ("unique", None), ("hot", "hot"), ("unique", "unique"), ("hot", None), ("unique", None)]
    for i, (scen, prof) in enumerate(steps):
        before = b.kafka_totals(p.app_id)["updates"]
        spy = None
        if prof:
            f = out / f"profile-{prof}-{i}.txt"
            spy = profile.record(w.proc.pid, cfg.duration - 1, f)
            pin(spy.pid, b.gen_cpus)
            time.sleep(0.5)
        r = b.wrk(w.port, "bucketstream", scen, record=False, prefix=b.prefix(f"r{i}"), seed=i)
        if spy:
            profile.wait(spy, 30)
        time.sleep(1)
        after = b.kafka_totals(p.app_id)["updates"]
        s = stats(w)
        print(f"{i} {scen}{' (py-spy)' if prof else ''}: {r.rps:.0f} req/s, update records {after - before}"
              f" ({(after - before) / max(1, r.requests):.4f}/req); cached {s['cached_keys']},"
              f" held admissions {s.get('held_admissions')}", flush=True)
finally:
    for p in list(b.pools):
        b.stop_pool(p)
    b.broker.stop()
