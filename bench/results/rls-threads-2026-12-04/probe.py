"""Probe (2026-12-04, #16): a worker's CPU per call by thread and py-spy shares, RLS (ghz) against POST /protected (wrk),
one hot user, 15 s each, two rounds; worker on CPU 0, load on CPU 1. Usage: python probe.py OUTDIR
py-spy raw stacks + per-thread CPU from /proc for each 15 s run."""
import json, os, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.cluster import Broker, WorkerPool, free_port
from bench import grpcload, loadgen, profile
from bench.tools import pin

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
tmp = Path(tempfile.mkdtemp())
broker = Broker(free_port(pair=True), tmp / "kafka")
broker.start()
def threads(pid):
    r = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            st = (t / "stat").read_text(); name = (t / "comm").read_text().strip()
        except OSError:
            continue
        f = st.rpartition(")")[2].split()
        r[f"{name}:{t.name}"] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return r
try:
    gport = free_port()
    pool = WorkerPool(broker, tmp, grpc_port=gport)
    (w,) = pool.start(1)
    pin(w.proc.pid, {0})
    binary = grpcload.build_ghz(); protoset = grpcload.write_protoset(tmp / "rls.protoset")
    grpcload.ghz(binary, protoset, gport, "hot", 5, "warm", cpus={1})
    for rnd in range(2):
        for kind in ("rls", "protected"):
            name = f"{kind}-{rnd}"
            t0 = threads(w.proc.pid)
            spy = profile.record(w.proc.pid, 14, out / f"{name}.txt")
            if kind == "rls":
                r = grpcload.ghz(binary, protoset, gport, "hot", 15, f"p{rnd}", cpus={1})
                n, rps = r.calls, r.rps
            else:
                r = loadgen.wrk(w.port, target="bucketstream", scenario="hot", duration=15, workdir=tmp,
                                prefix=f"q{rnd}", cpus={1})
                n, rps = r.requests, r.rps
            t1 = threads(w.proc.pid)
            profile.wait(spy, 30)
            per = {k: round((t1[k] - t0.get(k, 0)) / max(n, 1) * 1e6, 1) for k in t1 if t1[k] - t0.get(k, 0) > 0.05}
            s = profile.summarize(out / f"{name}.txt", top=25)
            (out / f"{name}.json").write_text(json.dumps({"rps": rps, "cpu_us_per_call_by_thread": per, "profile": s}, indent=1))
            print(name, round(rps), per, flush=True)
finally:
    pool.stop_all(); broker.stop()
