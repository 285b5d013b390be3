"""What a listening worker spends per update record another worker publishes, and where (py-spy).

``python -m bench.listener --out DIR [--runs 3] [--seconds 15] [--profile]
[--traffic KIND] [--rule RULE] [--warm-up S]``: one broker, three workers of one app,
C = 100, R = 10/s; worker 1 is offered 800 req/s, the other two listen. By default
every admission is published (``hold_share=0``) and every request is a new user:
the ``publish all``, ``unique`` row of the scale-out phase (``bench/scaleout.py``);
``--traffic`` and ``--rule`` pick another of its rows (``--rule hold --traffic
skewed``: the sparse records of a default worker), repeated ``--runs`` times on
the same processes. Per run: CPU of each process over
its idle baseline per update record. With ``--profile``, one more run with py-spy on
listener 1: DIR/profile.md (bench.profile's summary) and DIR/by-task.txt (the busy
samples by the task they ran in: the standby changelog reader, Faust's consumer
delivery, the peer feed, ...). Written to find #15 part 3's per-record cost.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

from bench import profile
from bench.run import Bench, Config, log
from bench.scaleout import RULES, TRAFFIC, idle_rates
from bench.tools import cpu_seconds, ensure_tools, pin

RATE = 800.0
#: task -> pattern searched in a sample's stack; the first that matches wins
TASKS = [
    ("standby changelog reader (Recovery._slurp_changelogs)", r"_slurp_changelogs"),
    ("Faust consumer delivery (Consumer._drain_messages)", r"_drain_messages"),
    ("Faust conductor (on_message: topic -> channel queue)", r"_compile_message_handler"),
    ("peer feed", r"peer_feed"),
    ("merge agent", r"Agents\.merge|_execute_actor"),
    ("expiry sweep (expire_idle)", r"expire_idle"),
    ("aiokafka (fetches, sends)", r"aiokafka/"),
    ("Faust consumer thread", r"mode/threads"),
]


def by_task(raw: Path) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or profile._IDLE.search(frames[-1]):
            continue
        total += int(n)
        counts[next((name for name, pat in TASKS if re.search(pat, stack)), "other (event loop, timers)")] += int(n)
    return [(k, v / total) for k, v in counts.most_common()] if total else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--traffic", choices=sorted(TRAFFIC), default="unique")
    ap.add_argument("--rule", choices=sorted(RULES), default="publish all")
    ap.add_argument("--warm-up", type=float, default=5.0, help="seconds of the same traffic before the runs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(Config(out=args.out, profile=False, phases=("scaleout",)))
    b.raw.mkdir(parents=True, exist_ok=True)
    ensure_tools(log)
    rows = []
    try:
        b.start_broker()
        p = b.pool("listen", capacity=100.0, rate=10.0, **RULES[args.rule])
        scenario, space = TRAFFIC[args.traffic]
        workers = p.start(3)
        for w in workers:
            pin(w.proc.pid, b.server_cpus)
        pids = {"loaded": workers[0].proc.pid, "listener 1": workers[1].proc.pid,
                "listener 2": workers[2].proc.pid}
        b.quiet_totals(p.app_id, workers)
        idle = idle_rates(pids, 10.0)
        b.wrk(workers[0].port, "warm-up", scenario, args.warm_up, RATE, record=False, space=space)
        for i in range(args.runs):
            before, _ = b.quiet_totals(p.app_id, workers)
            cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
            t0 = time.monotonic()
            run = b.wrk(workers[0].port, "listen", scenario, args.seconds, RATE, record=False, space=space)
            after, _ = b.quiet_totals(p.app_id, workers)
            elapsed = time.monotonic() - t0
            records = max(1, after["updates"] - before["updates"])
            us = {k: (cpu_seconds(pid) - cpu0[k] - idle[k] * elapsed) / records * 1e6 for k, pid in pids.items()}
            rows.append({"requests": run.requests, "updates": records, "us_per_record": us})
            log(f"run {i + 1}: {records} update records; µs per record: "
                + ", ".join(f"{k} {v:.0f}" for k, v in us.items()))
        if args.profile:
            raw = args.out / "profile-listener.txt"
            spy = profile.record(pids["listener 1"], args.seconds - 1, raw)
            time.sleep(0.5)
            b.wrk(workers[0].port, "profiled", scenario, args.seconds, RATE, record=False, space=space)
            profile.wait(spy, 60)
            (args.out / "profile.md").write_text(profile.render("listener 1", profile.summarize(raw, top=30)))
            (args.out / "by-task.txt").write_text("".join(f"{v * 100:5.1f} %  {k}\n" for k, v in by_task(raw)))
    finally:
        (args.out / "runs.json").write_text(json.dumps({"idle": locals().get("idle"), "runs": rows}, indent=1))
        b.cleanup()


if __name__ == "__main__":
    main()
