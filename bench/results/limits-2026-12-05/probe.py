"""#18's limits phase, with a py-spy profile of each worker and the workers' /metrics GC, flush and hold counters."""
import sys, time
sys.path.insert(0, "/work/main")
from pathlib import Path
from bench import run as R
from bench.tools import cpu_seconds, pin

cfg = R.Config(out=Path("/tmp/lim/out"), profile=True, repeats=2)
b = R.Bench(cfg)
b.raw.mkdir(parents=True, exist_ok=True)
b.start_broker()
C = R.CAPACITY
files = {1: f"[default]\ncapacity = {C}\nrate = {C}\n",
         2: (f"[default]\nlimits = [{{ name = \"second\", capacity = {C}, rate = {C} }},"
             f" {{ name = \"day\", capacity = {C * 10}, rate = {C} }}]\n")}
try:
    ws = {}
    for n, text in files.items():
        path = b.work / f"limits-{n}.toml"; path.write_text(text)
        p = b.pool(f"limits{n}", limits=path)
        (w,) = p.start(1); pin(w.proc.pid, b.server_cpus); b.warm(w.port, "bucketstream"); b.settle(w)
        ws[n] = w
    for rnd in range(2):
        for n, w in ws.items():
            before = cpu_seconds(w.proc.pid)
            run = b.wrk(w.port, "bucketstream", "hot", record=False, prefix=b.prefix(f"l{n}"))
            cpu = cpu_seconds(w.proc.pid) - before
            print(f"{n} limit(s): {cpu / run.requests * 1e6:.1f} µs/req at {run.rps:,.0f} req/s", flush=True)
    for n, w in ws.items():
        b.profile_run(w.proc.pid, w.port, f"limits{n}", "hot", f"limits{n}")
        _, _, body = w.request("GET", "/metrics", timeout=30)
        for line in body.decode().splitlines():
            if line.startswith(("bucketstream_flush", "bucketstream_held", "bucketstream_gc_pause_seconds_count",
                                "bucketstream_gc_pause_seconds_sum", "bucketstream_updates_published", "bucketstream_deferred")):
                print(n, line)
finally:
    b.cleanup()
