"""Probe (#19): how much CPU does the expiry sweep cost per table key per pass? Two idle workers holding the same
table size (hold_share 0: every user of the fill is a table key; expire_after 600 s, so none
expires during the probe); one sweeps every 10 s (the default), the other never (interval 1e6 s).
``python bench/results/sweep-2026-12-04/probe.py [FILL_SECONDS]`` after ``make run`` or ``make test``
built .venv (run it with .venv/bin/python). Prints each idle worker's CPU per 120 s, twice."""
import sys, time, json
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.run import Bench, Config, log, stats
from bench.tools import cpu_seconds, pin

cfg = Config(out=Path(str(Path(__file__).resolve().parent / "out")), duration=5, warmup=0, repeats=1, pin=True)
b = Bench(cfg)
b.raw.mkdir(parents=True, exist_ok=True)
res = {}
try:
    b.start_broker()
    pools = {}
    for name, interval in (("sweep10", 10.0), ("nosweep", 1e6)):
        p = b.pool(name, hold_share=0, expire_after=600.0, expire_check_interval=interval,
                   capacity=100.0, rate=10.0)
        (w,) = p.start(1)
        pin(w.proc.pid, b.server_cpus)
        pools[name] = w
    fill = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    for name, w in pools.items():
        run = b.wrk(w.port, f"fill {name}", "unique", fill, rate=2500, record=False, prefix=b.prefix(name))
        log(f"filled {name}: {run.requests} requests")
    time.sleep(30)  # merges done
    for rnd in range(2):
        c0 = {n: cpu_seconds(w.proc.pid) for n, w in pools.items()}
        time.sleep(120)
        for n, w in pools.items():
            cpu = cpu_seconds(w.proc.pid) - c0[n]
            keys = stats(w)["active_keys"]
            res.setdefault(n, []).append(cpu)
            log(f"round {rnd} {n}: {cpu:.2f} s CPU in 120 s, table {keys}")
finally:
    b.cleanup()
print(json.dumps(res))
