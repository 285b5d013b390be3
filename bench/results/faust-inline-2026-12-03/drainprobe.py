"""The merge agents' lag under a three-worker skewed load, and the backlog after it.

``PYTHONPATH=. python bench/results/faust-inline-2026-12-03/drainprobe.py RATE SECONDS``
from the repository root (before: from a worktree of 1228a8c): one broker, three
workers with the soak's rule and expiry, skewed traffic (bench.loadgen) to each:
once as fast as it goes for 5 s, then twice RATE req/s per worker for SECONDS.
After each load: the backlog polled every ~70 ms (update-topic end offsets less
the agents' merged counts), and the agents' lag (produce time to merge, p50/p99
of each worker's last 4,096 merged updates, the worst worker's).
"""
import concurrent.futures, time, sys
from bench.run import Bench, Config, stats
from bench import soak
cfg = Config(out=__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
b = Bench(cfg)
b.start_broker()
try:
    p = b.pool("dp", capacity=soak.CAPACITY, rate=soak.RATE, expire_after=soak.EXPIRE_AFTER,
               expire_check_interval=soak.EXPIRE_CHECK, cache_keys=soak.CACHE_KEYS)
    ws = p.start(3)
    heavy = b.prefix("heavy")
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        for rate_each, secs in ((0.0, 5), (float(sys.argv[1]), float(sys.argv[2])), (float(sys.argv[1]), float(sys.argv[2]))):
            futs = [ex.submit(b.wrk, w.port, "x", "skewed", secs, rate_each, False, prefix=heavy, seed=i) for i, w in enumerate(ws)]
            rs = [f.result() for f in futs]
            t0 = time.monotonic()
            first_backlog = None; drained = float("nan")
            print(f"load {rate_each} x3: {sum(r.rps for r in rs):.0f} req/s", flush=True)
            for _ in range(30):
                a = time.monotonic()
                produced = b.kafka_totals(p.app_id)["updates"]
                m = time.monotonic()
                handled = sum(soak.handled(w) for w in ws)
                e = time.monotonic()
                if first_backlog is None: first_backlog = produced - handled
                if produced - handled <= 0 and drained != drained: drained = e - t0
                print(f"  t={a - t0:5.3f} probe {1e3*(m-a):5.1f} ms metrics {1e3*(e-m):5.1f} ms backlog {produced - handled}", flush=True)
                if produced - handled <= 0 and e - t0 > 1.0:
                    break
                time.sleep(0.05)
            lags = [stats(w)["update_lag"] for w in ws]
            print(f"  SUMMARY backlog at end {first_backlog}, drained at {drained:.2f} s, merge lag p50 {max(l['p50'] for l in lags):.2f} s p99 {max(l['p99'] for l in lags):.2f} s", flush=True)
finally:
    for p in list(b.pools): b.stop_pool(p)
    b.broker.stop()
