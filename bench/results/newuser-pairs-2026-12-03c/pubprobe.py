"""Does one fresh worker publish anything for new users? Update records per request, hot then unique users.

``PYTHONPATH=. python bench/results/newuser-pairs-2026-12-03c/pubprobe.py`` from the repository root: one
broker, one worker pinned as the bench pins it, the worker phase's rule (C = R = 1,000,000); 10 s each of one
hot user as fast as it goes, new users as fast as it goes, new users at 3,000 req/s, new users as fast as it
goes; after each, the update records written to Kafka and the worker's key counts.
"""
import sys, time
from bench.run import Bench, Config, stats
from bench.tools import pin
cfg = Config(out=__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
b = Bench(cfg)
b.start_broker()
try:
    p = b.pool("pp", capacity=1e6, rate=1e6)
    w, = p.start(1)
    pin(w.proc.pid, b.server_cpus)
    for i, (scen, rate) in enumerate([("hot", 0.0), ("unique", 0.0), ("unique", 3000.0), ("unique", 0.0)]):
        before = b.kafka_totals(p.app_id)["updates"]
        r = b.wrk(w.port, "x", scen, 10, rate, False, prefix=b.prefix(f"r{i}"), seed=i)
        time.sleep(1)
        after = b.kafka_totals(p.app_id)["updates"]
        s = stats(w)
        print(f"{scen} {rate}: {r.rps:.0f} req/s, update records {after - before} ({(after-before)/max(1,r.requests):.4f}/req); held {s.get('held_keys', s.get('keys', ''))}", flush=True)
        print({k: v for k, v in s.items() if "held" in k or "own" in k or "cached" in k or "hold" in k})
finally:
    for p in list(b.pools): b.stop_pool(p)
    b.broker.stop()
