"""Probe (#19): how long GET /stats takes, and stalls the worker's event loop, as the table grows.

One broker, one worker pinned to one core (``hold_share=0``: every user of the fill is a table key), filled
in three steps of 50,000 users; after each, three GET /stats (and three windows without, the baseline) while a thread asks /healthz every 2 ms: the
longest /healthz answer is how long a request waited behind /stats. ``.venv/bin/python
bench/results/stats-2026-12-04/probe.py [FILL_SECONDS] [OUT_DIR]``."""
import sys, time, json, threading, statistics
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.run import Bench, Config, log, stats
from bench.tools import pin

out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent / "out"
cfg = Config(out=out, duration=5, warmup=0, repeats=1, pin=True)
b = Bench(cfg)
b.raw.mkdir(parents=True, exist_ok=True)
try:
    b.start_broker()
    p = b.pool("stats", hold_share=0, expire_after=600.0, capacity=100.0, rate=10.0)
    (w,) = p.start(1)
    pin(w.proc.pid, b.server_cpus)
    fill = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    for step in range(3):
        b.wrk(w.port, "fill", "unique", fill / 3, rate=2500, record=False, prefix=b.prefix(f"f{step}"))
        time.sleep(10)
        # /stats timed while a paced probe of /healthz measures how long requests wait behind it
        for rep in range(6):  # odd rounds without /stats: the longest /healthz of a quiet worker
            lat = []
            stop = threading.Event()
            def ping():
                while not stop.is_set():
                    t = time.perf_counter(); w.request("GET", "/healthz"); lat.append(time.perf_counter() - t)
                    time.sleep(0.002)
            th = threading.Thread(target=ping); th.start(); time.sleep(0.3)
            if rep % 2 == 0:
                t = time.perf_counter(); st = stats(w); took = time.perf_counter() - t
                what = f"table {st['active_keys']:,}: /stats took {took * 1e3:.1f} ms"
            else:
                time.sleep(0.05)
                what = "no /stats (baseline)"
            time.sleep(0.3); stop.set(); th.join()
            log(f"{what}; /healthz meanwhile max {max(lat) * 1e3:.1f} ms (median {statistics.median(lat) * 1e3:.2f} ms)")
finally:
    b.cleanup()
