"""Hot-user max on a fresh worker, N runs: `cd <tree> && PYTHONPATH=. python <this file> LABEL hot,hot,hot`."""
import sys, time
from pathlib import Path
from bench.run import Bench, Config, log, cpu_seconds
from bench.tools import ensure_tools
cfg = Config(out=Path("/tmp/hotonly"), duration=10.0)
b = Bench(cfg); b.raw.mkdir(parents=True, exist_ok=True); ensure_tools(lambda m: None)
try:
    b.start_broker()
    with b.fresh_worker("h") as (app_id, w):
        b.warm(w.port, "bucketstream"); b.settle(w)
        res = []
        for sc in sys.argv[2].split(","):
            c0 = cpu_seconds(w.proc.pid)
            run = b.wrk(w.port, "bucketstream", sc, record=False)
            res.append(f"{sc} {run.rps:.0f}/s {(cpu_seconds(w.proc.pid)-c0)/run.requests*1e6:.0f}us")
        print(sys.argv[1], " | ".join(res), flush=True)
finally:
    b.cleanup()
