"""The scale-out phase of ``make bench``: what one worker's traffic costs the others, and what N workers can carry.

Three workers of one app; worker 1 alone is offered a fixed load
(``scaleout_rate`` req/s for ``scaleout_seconds``), the other two only listen.
For each traffic kind (a new user per request; 5,000 users, about two requests
each at the default load; one hot user, mostly refused; a skewed mix, Zipf over
10^6 users as ``bench.loadgen`` draws it: the shape real traffic has, not in
#15's targets) and for each publishing
rule side by side (``publish all``: hold_share 0, every admission published;
``hold, no defer``: hold_defer 0, past its allowance a key goes out at the next
flush; ``hold``: the default rule, bucketstream.hold), measured over an idle
baseline of the same processes:

* update and changelog records per request;
* CPU per request on the loaded worker, on each listener, on the broker.

From those, the projected capacity of N = 3, 10 and 100 workers as a share of N
times one worker's, for traffic spread evenly over them: a worker serving x
req/s spends ``x·s`` on its own requests and ``(N-1)·x·l`` listening to the
others' (``s``: the loaded worker's CPU per request), so
``share = s / (s + (N-1)·l)``, with ``l`` = the run's update records per
request × what a listener spends per record (measured in the ``publish all``,
``unique`` run: one record per request). A listener's own CPU per request is
shown too, but near zero records it is the measurement floor (timers and fetch
loops over the idle baseline), not a cost that scales. The broker's CPU is
shown, not in the share.

No assertion on speed anywhere; ``targets`` says what was met.
"""

from __future__ import annotations

import time

from bench.tools import cpu_seconds, pin

CAPACITY, RATE = 100.0, 10.0
#: traffic kind -> (wrk scenario, key space): 0 = a new user per request
TRAFFIC = {"unique": ("unique", 0), "5,000 users": ("unique", 5000), "hot": ("hot", 0), "skewed": ("skewed", 0)}
#: rule -> the workers' settings for it ({}: the defaults)
RULES = {"publish all": {"hold_share": 0.0}, "hold, no defer": {"hold_defer": 0.0}, "hold": {}}
PROJECT = (3, 10, 100)
#: the issue's targets (#15)
MAX_RECORDS, MAX_LISTEN_US, MAX_LOADED_RATIO, MIN_SHARE_100 = 0.005, 3.0, 1.2, 0.8


def phase(bench, log) -> None:
    cfg = bench.cfg
    log(f"scale-out: three workers, worker 1 offered {cfg.scaleout_rate:g} req/s for {cfg.scaleout_seconds:g} s, "
        "the others listen; " + " vs ".join(RULES))
    out = bench.results.setdefault("scaleout", {"rate": cfg.scaleout_rate, "seconds": cfg.scaleout_seconds,
                                                "rules": {}})
    for i, (name, settings) in enumerate(RULES.items()):
        out["rules"][name] = run_rule(bench, log, f"scale{i}", name, settings)
    per_record = listener_us_per_record(out["rules"]["publish all"]["traffic"]["unique"])
    out["listener_us_per_record"] = per_record
    for r in out["rules"].values():
        for row in r["traffic"].values():
            listen = row["updates_per_request"] * per_record
            row["projected_share"] = {str(k): project(row["cpu_us_per_request"]["loaded"], listen, k)
                                      for k in PROJECT}
    log(f"  a listener spends {per_record:.0f} µs per update record; projected share at N = 3, 10, 100: " +
        "; ".join(f"{name} {kind} " + "/".join(f"{row['projected_share'][str(k)]:.0%}" for k in PROJECT)
                  for name, r in out["rules"].items() for kind, row in r["traffic"].items()))
    out["targets"] = targets(out["rules"]["hold"])


def run_rule(bench, log, app: str, name: str, settings: dict) -> dict:
    cfg = bench.cfg
    p = bench.pool(app, capacity=CAPACITY, rate=RATE, **settings)
    rows = {}
    try:
        workers = p.start(3)
        for w in workers:
            pin(w.proc.pid, bench.server_cpus)
        pids = {"loaded": workers[0].proc.pid, "listener 1": workers[1].proc.pid,
                "listener 2": workers[2].proc.pid}
        broker = bench.broker_pid()
        if broker:
            pids["broker"] = broker
        bench.quiet_totals(p.app_id, workers)  # the start's topic and group traffic is over
        idles = {}
        for kind, (scenario, space) in TRAFFIC.items():
            # the baseline just before each run: a worker's idle CPU drifts over its first
            # minute (start-up, first timers), by as much as the floor we measure
            idle = idles[kind] = idle_rates(pids, 2.0 if cfg.smoke else 10.0)
            before, _ = bench.quiet_totals(p.app_id, workers)
            cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
            t0 = time.monotonic()
            run = bench.wrk(workers[0].port, f"scale-out {name}", scenario, cfg.scaleout_seconds,
                            cfg.scaleout_rate, record=False, space=space)
            after, drain = bench.quiet_totals(p.app_id, workers)
            elapsed = time.monotonic() - t0
            n = max(1, run.requests)
            cpu_us = {k: max(0.0, cpu_seconds(pid) - cpu0[k] - idle[k] * elapsed) / n * 1e6
                      for k, pid in pids.items()}
            row = {
                "requests": run.requests, "rps": run.rps, "p99_ms": run.p99_ms, "errors": run.errors - run.non_2xx,
                "updates_per_request": (after["updates"] - before["updates"]) / n,
                "changelog_per_request": (after["changelog"] - before["changelog"]) / n,
                "cpu_us_per_request": cpu_us, "drain_seconds": drain,
            }
            rows[kind] = row
            log(f"  {name:14s} {kind:11s} {run.rps:6,.0f} req/s  {row['updates_per_request']:.4f} upd/req  "
                f"loaded {cpu_us['loaded']:5.0f} µs  listeners {cpu_us['listener 1']:5.1f}/"
                f"{cpu_us['listener 2']:5.1f} µs  broker {cpu_us.get('broker', 0):5.1f} µs per request")
        return {"idle_cpu": idles, "traffic": rows}
    finally:
        bench.stop_pool(p)


def idle_rates(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second each process spends with no request (timers, fetch loops)."""
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    time.sleep(seconds)
    return {k: (cpu_seconds(pid) - before[k]) / seconds for k, pid in pids.items()}


def listener_us_per_record(row: dict) -> float:
    """What a listening worker spends per update record another worker published."""
    cpu = row["cpu_us_per_request"]
    return (cpu["listener 1"] + cpu["listener 2"]) / 2 / max(1e-9, row["updates_per_request"])


def project(serve_us: float, listen_us: float, n: int) -> float:
    """Capacity of ``n`` workers as a share of ``n`` times one worker's (see the module doc)."""
    if serve_us <= 0:
        return 0.0
    return serve_us / (serve_us + (n - 1) * listen_us)


def targets(hold: dict) -> dict:
    t = hold["traffic"]
    out = {}
    for kind in ("unique", "5,000 users"):
        row = t[kind]
        cpu = row["cpu_us_per_request"]
        out[kind] = {
            "records_per_request": [row["updates_per_request"], MAX_RECORDS,
                                    row["updates_per_request"] <= MAX_RECORDS],
            "listener_us": [max(cpu["listener 1"], cpu["listener 2"]), MAX_LISTEN_US,
                            max(cpu["listener 1"], cpu["listener 2"]) <= MAX_LISTEN_US],
            "loaded_vs_hot": [cpu["loaded"] / max(1e-9, t["hot"]["cpu_us_per_request"]["loaded"]),
                              MAX_LOADED_RATIO,
                              cpu["loaded"] <= MAX_LOADED_RATIO * t["hot"]["cpu_us_per_request"]["loaded"]],
            "share_at_100": [row["projected_share"]["100"], MIN_SHARE_100,
                             row["projected_share"]["100"] >= MIN_SHARE_100],
        }
    return out


def target_rows(results: dict) -> list[tuple[str, str, bool | None]]:
    """#15's targets from the scale-out phase, for results.md's target table."""
    s = results.get("scaleout")
    if not s or "targets" not in s:
        return []
    out = []
    for kind, t in s["targets"].items():
        out += [
            (f"scale-out, {kind}: update records per request ≤ {MAX_RECORDS}", f"{t['records_per_request'][0]:.4f}",
             t["records_per_request"][2]),
            (f"scale-out, {kind}: a listener's CPU per admission elsewhere ≤ {MAX_LISTEN_US:g} µs",
             f"{t['listener_us'][0]:.1f} µs", t["listener_us"][2]),
            (f"scale-out, {kind}: loaded worker's CPU per request ≤ {MAX_LOADED_RATIO}× hot user's",
             f"{t['loaded_vs_hot'][0]:.2f}×", t["loaded_vs_hot"][2]),
            (f"scale-out, {kind}: projected capacity at N = 100 ≥ {MIN_SHARE_100:.0%} of 100 × one worker",
             f"{t['share_at_100'][0]:.0%}", t["share_at_100"][2]),
        ]
    return out


def markdown(results: dict) -> list[str]:
    s = results.get("scaleout")
    if not s:
        return []
    out = ["## Scale-out: one loaded worker, two listening", "",
           f"Three workers, C = {CAPACITY:g}, R = {RATE:g}/s; worker 1 alone offered {s['rate']:,.0f} req/s for "
           f"{s['seconds']:g} s per traffic kind; CPU over each process's idle baseline, per request served by "
           "worker 1. Projected share: capacity of N workers as a share of N × one worker's, "
           "s / (s + (N−1)·l) with s the loaded worker's CPU per request and l = update records per request × "
           f"a listener's CPU per record ({s.get('listener_us_per_record', 0):.0f} µs, from the publish-all "
           "unique run). Listener CPU near zero records is the measurement floor.", "",
           "| rule | traffic | req/s | update rec/req | changelog rec/req | loaded µs/req | listeners µs/req | "
           "broker µs/req | N = 3 | N = 10 | N = 100 |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rule, r in s["rules"].items():
        for kind, row in r["traffic"].items():
            cpu = row["cpu_us_per_request"]
            share = row["projected_share"]
            out.append(f"| {rule} | {kind} | {row['rps']:,.0f} | {row['updates_per_request']:.4f} | "
                       f"{row['changelog_per_request']:.4f} | {cpu['loaded']:.0f} | "
                       f"{cpu['listener 1']:.1f} / {cpu['listener 2']:.1f} | {cpu.get('broker', 0):.1f} | "
                       f"{share['3']:.0%} | {share['10']:.0%} | {share['100']:.0%} |")
    return out + [""]
