"""The soak phase of ``make bench``: minutes of fixed load on one worker, then three, reported minute by minute.

A limiter runs for months and sees millions of distinct users, so whatever
costs more as users are seen or as time passes shows here as a slope, where a
10 s run sees nothing. For each surface (``http``: ``POST /protected`` through
wrk; ``rls``: Envoy's ``ShouldRateLimit`` through ghz, ``bench.grpcload``), for
one worker and for three, and for each traffic kind (``unique``: a new user on
every request; ``skewed``: a few heavy users and a long tail of light ones,
``bench.loadgen``):

1. fresh workers of a new app, with the rule of a real deployment (C = 100,
   R = 10/s: the skewed mix's heavy users are refused) and the expiry horizon
   shortened to ``EXPIRE_AFTER`` s, so buckets expire during the run;
2. calibration: as fast as it goes for ``calibrate`` s; the soak offers
   ``fraction`` of that, spread evenly over the workers, once the merge agents
   have handled the calibration's updates;
3. windows of ``window`` s back to back for ``seconds`` s; after each, the
   achieved rate, p50/p99 of the window's requests (all workers' pooled,
   ``loadgen.pooled_percentile``; the worst worker's p99 beside it), and per worker its RSS, the size of its data
   directory (RocksDB), its cached and own keys and its table's keys, and the
   backlog: update-topic records no merge agent has handled yet (the topic's
   end offsets less the agents' ``bucketstream_updates_merged_total``, which
   counts every record an agent handled, whatever the result);
4. once the load stops, how long until the agents have handled everything.

Before the runs of each worker count, a control (``control``): the same harness
against as many bare aiohttp handlers, placed on the cores as the workers are,
whose windows can differ only by the machine and the load generator.

No assertion on speed anywhere: ``targets`` says what was met.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import re
import statistics
import time

from bench.tools import Yardstick, cpu_seconds, dir_bytes, pin, python, rss_bytes, run_delay, steal_seconds, wait_http

#: The soak's rule: nobody in ``unique`` comes near it; ``skewed``'s heavy users do.
CAPACITY, RATE = 100.0, 10.0
#: Buckets full and idle this long are deleted (the horizon is max(this, C/R) = 30 s), every EXPIRE_CHECK s.
EXPIRE_AFTER, EXPIRE_CHECK = 30.0, 10.0
#: The decoded cache's size (BUCKETSTREAM_CACHE_KEYS): a quarter of the default, so that it is full
#: within the first half of a 5-minute run at a few hundred new users a second, and the last
#: half shows the steady state (memory that still grows then is a leak, not a cache filling).
CACHE_KEYS = 50_000
#: "No backlog at the end": the agents have handled every update within this long after the load.
DRAIN_TARGET = 0.5


def phase(bench, log) -> None:
    cfg = bench.cfg
    log(f"soak: {cfg.soak_seconds:g} s of each traffic kind at {cfg.soak_fraction:g} x its max load, "
        + (f"{' then '.join(map(str, cfg.soak_workers))} worker(s)" if not cfg.soak_control_only else "no worker")
        + (", each count after as many bare handlers (the control)" if cfg.soak_control else "")
        + f", a row every {cfg.soak_window:g} s, through {' then '.join(cfg.soak_protocol)}")
    runs = bench.results.setdefault("soak", [])
    control_runs = bench.results.setdefault("soak_controls", []) if cfg.soak_control else []
    ghz = {}
    for protocol in cfg.soak_protocol:
        if protocol == "rls":
            from bench import grpcload

            try:
                ghz[protocol] = (grpcload.build_ghz(), grpcload.write_protoset(bench.work / "rls.protoset"))
            except RuntimeError as exc:
                log(f"  soak through rls skipped: {exc}")
                continue
        else:
            ghz[protocol] = None
    # each worker count right after its control: the same hour of the machine, the same placement on its cores
    for workers in cfg.soak_workers:
        if cfg.soak_control:
            control_runs.append(control(bench, log, workers))
        if cfg.soak_control_only:
            continue
        for tool in ghz.values():
            for traffic in cfg.soak_traffic:
                runs.append(soak(bench, log, workers, traffic, tool))


def soak(bench, log, n: int, traffic: str, ghz: tuple | None = None) -> dict:
    """One soak run; through RLS when ``ghz`` is (ghz's binary, the protoset), else through HTTP."""
    from tests.cluster import free_port

    cfg = bench.cfg
    protocol = "rls" if ghz else "http"
    p = bench.pool(f"soak{n}{traffic[0]}{protocol[0]}", capacity=CAPACITY, rate=RATE, expire_after=EXPIRE_AFTER,
                   expire_check_interval=EXPIRE_CHECK, cache_keys=CACHE_KEYS)
    entry: dict = {"workers": n, "traffic": traffic, "protocol": protocol, "window": cfg.soak_window, "rows": []}
    try:
        if ghz:  # each worker its own gRPC port
            workers = []
            for _ in range(n):
                port = free_port()
                (w,) = p.start(1, ready=False, grpc_port=port)
                w.grpc_port = port
                workers.append(w)
            for w in workers:
                w.wait_ready()
            p.wait_stable()
        else:
            workers = p.start(n)
        if n == 1:
            pin(workers[0].proc.pid, bench.server_cpus)
        with concurrent.futures.ThreadPoolExecutor(n) as ex:
            def load(rate_each: float, seconds: float, prefix: str, seed: int):
                if ghz:
                    from bench import grpcload

                    futs = [ex.submit(grpcload.soak_run, *ghz, w.grpc_port, traffic, seconds, prefix, rate_each, seed,
                                      bench.work, concurrency=cfg.connections, cpus=bench.gen_cpus) for w in workers]
                else:
                    futs = [ex.submit(bench.wrk, w.port, f"soak x{n} [{i}]", traffic, seconds, rate_each, False,
                                      prefix=prefix, seed=seed, grid=True) for i, w in enumerate(workers)]
                return [f.result() for f in futs]

            calibration = load(0.0, cfg.soak_calibrate, bench.prefix("cal"), 1)
            entry["max_rps"] = sum(r.rps for r in calibration)
            entry["offered"] = cfg.soak_fraction * entry["max_rps"]
            # the calibration's backlog is not the soak's: start once the agents have handled it
            drain = drain_time(bench, p.app_id, workers, max(cfg.drain_timeout, 300.0))
            log(f"  soak {traffic}, {n} worker(s), {protocol}: max {entry['max_rps']:,.0f} req/s (the agents handled its "
                f"updates {drain:.1f} s after it); offering {entry['offered']:,.0f} req/s")
            broker = bench.broker_pid()
            # on the cores the workers run on: the machine's speed as they meet it
            stick = Yardstick(os.sched_getaffinity(workers[0].proc.pid))
            heavy = bench.prefix("heavy")  # skewed: the same users all run long (their buckets stay hot)
            started = time.monotonic()
            for i in range(max(1, math.ceil(cfg.soak_seconds / cfg.soak_window))):
                prefix = heavy if traffic == "skewed" else bench.prefix("new")
                cpu0 = [cpu_seconds(w.proc.pid) for w in workers]
                gc0 = [gc_pauses(w) for w in workers]
                refused0 = [refusals(w) for w in workers] if ghz else None
                broker0 = cpu_seconds(broker) if broker else None
                waited0, steal0, began = [run_delay(w.proc.pid) for w in workers], steal_seconds(), time.monotonic()
                stick.start()
                try:
                    runs = load(entry["offered"] / n, cfg.soak_window, prefix, i + 2)
                finally:
                    yardstick = stick.stop()
                ended = time.monotonic()
                row_wait = waiting([w.proc.pid for w in workers], waited0, steal0, ended - began)
                cpu = sum(cpu_seconds(w.proc.pid) - c for w, c in zip(workers, cpu0))
                row = sample(bench, p.app_id, workers, runs)
                row.update(gc_window(gc0, [gc_pauses(w) for w in workers]))
                row.update(row_wait)
                row["yardstick_us"] = yardstick
                if ghz:  # OVER_LIMIT is a gRPC OK to ghz: the refusals as the workers counted them
                    row["non_2xx"] = sum(refusals(w) - r for w, r in zip(workers, refused0))
                # the workers' CPU per request: on a shared machine a steadier sign of a cost that
                # grows with time than latency is
                row["cpu_us"] = 1e6 * cpu / row["requests"] if row["requests"] else None
                # the broker shares the cores: its CPU growing would slow the workers with no cost of theirs growing
                row["broker_cpu_us"] = (1e6 * (cpu_seconds(broker) - broker0) / row["requests"]
                                        if broker0 is not None and row["requests"] else None)
                row["t"] = time.monotonic() - started
                entry["rows"].append(row)
                log(f"  {row['t']:5.0f}s {row['rps']:8,.0f} req/s  CPU {_us(row.get('cpu_us'))} µs/req "
                    f"(broker {_us(row.get('broker_cpu_us'))})  p50 {row['p50_ms']:6.2f} ms  p99 "
                    f"{row['p99_ms']:7.2f} ms (worst worker {row['p99_worst_ms']:7.2f})  RSS {row['rss_max'] / 2**20:6.0f} MiB  RocksDB "
                    f"{row['rocksdb_max'] / 2**20:5.1f} MiB  Python {row['py_blocks_max'] / 1e6:5.2f}M blocks  store "
                    f"{row['store_max'] / 2**20:6.1f} MiB  backlog {row['backlog']:6,} rec (merge lag p99 {_2f(row.get('merge_lag_p99'))} s)  keys cached "
                    f"{row['cached']:,} own {row['own']:,} table {row['table']}  GC {row['gc_seconds'] * 1e3:,.0f} ms "
                    f"({row['gc_full']} full, longest ≤ {_pause(row['gc_longest'])})  waiting for a core "
                    f"{row['wait_ms_per_s']:.0f} ms/s (stolen {row['steal_pct']:.1f} %)  yardstick {_us(yardstick)} µs")
        # from the end of the load, not from the end of the last row's sampling (a second or more)
        entry["drain_seconds"] = drain_time(bench, p.app_id, workers, cfg.drain_timeout, since=ended)
        log(f"  after the load, the agents handled the last update within {entry['drain_seconds']:.1f} s")
    finally:
        bench.stop_pool(p)
    return entry


def control(bench, log, n: int = 1) -> dict:
    """The soak's load against servers whose work never changes: ``n`` bare aiohttp handlers
    (``bench.servers ceiling``), placed on the cores as ``n`` workers are (one: alone on the core a
    single worker gets; more: unpinned, sharing both cores with the load generators and the broker,
    each with its own wrk), calibrated and offered the same share of their own max, new users,
    windows as long, p99 pooled as the workers' is. They keep nothing per user, so nothing in them
    can grow: how much their p99 moves from one window to the next is what the harness and the
    machine do to a window's p99 by themselves. No target; reported beside the workers' runs,
    whose p99 ratio is judged against a fixed 1.2, not against this."""
    from bench.loadgen import pooled_percentile
    from tests.cluster import free_port

    cfg = bench.cfg
    ports = [free_port() for _ in range(n)]
    procs = [bench.procs.start(f"soak-control-{i}", [python(), "-m", "bench.servers", "ceiling", "--port", str(port)],
                               bench.raw / f"soak-control-{n}-{i}.log", cpus=bench.server_cpus if n == 1 else None)
             for i, port in enumerate(ports)]
    pids = [p.pid for p in procs]
    entry: dict = {"server": "bare aiohttp handler", "servers": n, "traffic": "unique", "window": cfg.soak_window,
                   "rows": []}
    try:
        for port, proc in zip(ports, procs):
            wait_http(port, "/healthz", 30, proc)
        with concurrent.futures.ThreadPoolExecutor(n) as ex:
            def load(rate_each: float, seconds: float, seed: int, prefix: str | None = None):
                futs = [ex.submit(bench.wrk, port, f"soak control x{n} [{i}]", "unique", seconds, rate_each, False,
                                  prefix=prefix, seed=seed, grid=True) for i, port in enumerate(ports)]
                return [f.result() for f in futs]

            entry["max_rps"] = sum(r.rps for r in load(0.0, cfg.soak_calibrate, 1))
            entry["offered"] = cfg.soak_fraction * entry["max_rps"]
            log(f"  soak control, {n} bare handler(s): max {entry['max_rps']:,.0f} req/s; offering "
                f"{entry['offered']:,.0f} req/s")
            entry["cpus"] = sorted(os.sched_getaffinity(pids[0]))
            stick = Yardstick(set(entry["cpus"]))
            started = time.monotonic()
            for i in range(max(1, math.ceil(cfg.soak_seconds / cfg.soak_window))):
                cpu0, waited0, steal0 = [cpu_seconds(p) for p in pids], [run_delay(p) for p in pids], steal_seconds()
                began = time.monotonic()
                stick.start()
                try:
                    runs = load(entry["offered"] / n, cfg.soak_window, i + 2, bench.prefix("ctl"))
                finally:
                    yardstick = stick.stop()
                requests = sum(r.requests for r in runs)
                cpu = sum(cpu_seconds(p) for p in pids) - sum(cpu0)
                row = {"t": time.monotonic() - started, "rps": sum(r.rps for r in runs), "requests": requests,
                       "saturated": any(r.saturated for r in runs), "errors": sum(r.errors for r in runs),
                       "p50_ms": pooled_percentile(runs, 50), "p99_ms": pooled_percentile(runs, 99),
                       "cpu_us": 1e6 * cpu / requests if requests else None,
                       **waiting(pids, waited0, steal0, time.monotonic() - began), "yardstick_us": yardstick}
                entry["rows"].append(row)
                log(f"  {row['t']:5.0f}s {row['rps']:8,.0f} req/s  CPU {_us(row['cpu_us'])} µs/req  p50 "
                    f"{row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms  waiting for a core "
                    f"{row['wait_ms_per_s']:.0f} ms/s (stolen {row['steal_pct']:.1f} %)  yardstick {_us(yardstick)} µs")
    finally:
        for proc in procs:
            bench.procs.stop(proc)
    return entry


def sample(bench, app_id: str, workers, runs) -> dict:
    from bench.loadgen import pooled_percentile
    from bench.run import stats

    # first: the backlog right after the load, before the per-worker polls below give the agents time
    unhandled = backlog(bench, app_id, workers)
    per = [stats(w) for w in workers]
    rss = [rss_bytes(w.proc.pid) for w in workers]
    store = [dir_bytes(w.data_dir) for w in workers]
    # memtables + block caches + index and filter blocks: RocksDB's part of the RSS
    rocksdb = [sum(v for k, v in s["rocksdb_memory_bytes"].items() if k != "stores") for s in per]
    blocks = [s["python_allocated_blocks"] for s in per]
    requests = sum(r.requests for r in runs)
    return {
        "rps": sum(r.rps for r in runs), "requests": requests, "non_2xx": sum(r.non_2xx for r in runs),
        "errors": sum(r.errors - r.non_2xx for r in runs),  # sockets and timeouts; 429s are not errors here
        "saturated": any(r.saturated for r in runs),
        # p99 of every request the window answered, all workers together (what #19's target is
        # about); the worst worker's is an upper bound of it, kept beside it
        "p50_ms": pooled_percentile(runs, 50), "p99_ms": pooled_percentile(runs, 99),
        "p99_worst_ms": max(r.p99_ms for r in runs),
        "rss": rss, "rss_max": max(rss), "store": store, "store_max": max(store),
        "rocksdb": rocksdb, "rocksdb_max": max(rocksdb), "py_blocks": blocks, "py_blocks_max": max(blocks),
        # its parts, per worker (memtables, block_cache, table_readers): which one a rising sum is
        "rocksdb_parts": [{k: v for k, v in s["rocksdb_memory_bytes"].items() if k != "stores"} for s in per],
        "cached": sum(s["cached_keys"] for s in per), "own": sum(s["own_unreflected_keys"] for s in per),
        "table": max((s["active_keys"] or 0) for s in per),
        "backlog": unhandled,
        # the agents' lag, the update's produce time to its merge, p99 of each worker's last 4,096
        # merged updates (the worst worker's): how far behind the table was while the load ran
        "merge_lag_p99": max((s["update_lag"]["p99"] for s in per if s["update_lag"]["samples"]), default=None),
    }


def backlog(bench, app_id: str, workers) -> int:
    """Update-topic records no merge agent has handled yet (a replay after a rebalance is
    counted twice by the agents: never below 0)."""
    produced = bench.kafka_totals(app_id)["updates"]
    return max(0, produced - sum(handled(w) for w in workers))


def handled(w) -> int:
    """``bucketstream_updates_merged_total`` of one worker, all results."""
    _, _, body = w.request("GET", "/metrics", timeout=30)
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith("bucketstream_updates_merged_total{")))


#: The worker's refusals through RLS (bucketstream.metrics: decisions by policy, outcome and protocol).
_RLS_REFUSED = re.compile(r'^bucketstream_decisions_total\{[^}]*outcome="refused"[^}]*protocol="rls"[^}]*\} (\S+)$', re.M)


def refusals(w) -> int:
    """One worker's RLS descriptors answered OVER_LIMIT so far."""
    _, _, body = w.request("GET", "/metrics", timeout=30)
    return int(sum(float(v) for v in _RLS_REFUSED.findall(body.decode())))


#: The worker's histogram of garbage-collector passes (bucketstream.metrics.GC_PAUSE).
_GC = re.compile(r'^bucketstream_gc_pause_seconds_(bucket|sum|count)\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)$', re.M)


def gc_pauses(w) -> dict:
    """One worker's garbage-collector totals so far: seconds and passes by generation, and
    the histogram's cumulative bucket counts (all generations)."""
    _, _, body = w.request("GET", "/metrics", timeout=30)
    out: dict = {"seconds": 0.0, "full": 0, "buckets": {}}
    for kind, generation, le, value in _GC.findall(body.decode()):
        if kind == "sum":
            out["seconds"] += float(value)
        elif kind == "count" and generation == "2":
            out["full"] = int(float(value))
        elif kind == "bucket":
            out["buckets"][le] = out["buckets"].get(le, 0) + int(float(value))
    return out


def gc_window(before: list[dict], after: list[dict]) -> dict:
    """The window's collector pauses: the most any one worker spent in them, its full (generation 2)
    passes, and an upper bound of the longest pause (the smallest histogram bound every pass of
    the window fits under). A pause holds the worker's whole event loop, every request waiting."""
    worst = max(range(len(after)), key=lambda i: after[i]["seconds"] - before[i]["seconds"])
    longest = 0.0
    for i, (a, b) in enumerate(zip(before, after)):
        passes = {le: b["buckets"][le] - a["buckets"].get(le, 0) for le in b["buckets"]}
        total = passes.get("+Inf", 0)
        bounds = sorted((float(le), n) for le, n in passes.items())
        if total:
            longest = max(longest, next(le for le, n in bounds if n == total))
    return {"gc_seconds": after[worst]["seconds"] - before[worst]["seconds"],
            "gc_full": after[worst]["full"] - before[worst]["full"], "gc_longest": longest}


def waiting(pids: list[int], waited0: list[float], steal0: float, seconds: float) -> dict:
    """The window's waits for a core: the most any of ``pids`` (the workers, or the control's
    server) spent runnable but not running, in ms per second of the window, and the share of the
    machine's CPU time the hypervisor gave to other guests. A request that arrives while its
    worker's loop waits for a core waits with it: a window whose p99 stands out with these up is
    one in which the loops waited for the cores, not one in which a worker stalled on its own."""
    waited = max(run_delay(pid) - d for pid, d in zip(pids, waited0))
    stolen = steal_seconds() - steal0
    return {"wait_ms_per_s": 1e3 * waited / seconds if seconds > 0 else 0.0,
            "steal_pct": 100 * stolen / (seconds * (os.cpu_count() or 1)) if seconds > 0 else 0.0}


def _pause(seconds: float) -> str:
    return "-" if not seconds else ("> 0.5 s" if math.isinf(seconds) else f"{seconds * 1e3:g} ms")


def drain_time(bench, app_id: str, workers, timeout: float, since: float | None = None) -> float:
    """Seconds from the end of the load (``since``, a ``time.monotonic()``; default now) until
    a poll finds that the agents have handled every update (the end of that poll)."""
    started = time.monotonic() if since is None else since
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            if backlog(bench, app_id, workers) == 0:
                break
        time.sleep(0.05)
    return time.monotonic() - started


# -- the report ------------------------------------------------------------------------

def _halves(entry: dict) -> tuple[dict, dict, dict] | None:
    rows = entry["rows"]
    if len(rows) < 2:
        return None
    return rows[0], rows[len(rows) // 2], rows[-1]


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """#19's targets per soak run: last window's throughput ≥ 0.95 × the first's, its p99 ≤ 1.2 ×,
    RSS growth over the last half < 5 %, no backlog at the end beyond the commit and flush intervals."""
    out = []
    for c in controls(results):
        if len(c["rows"]) < 2:
            continue
        first, last = c["rows"][0], c["rows"][-1]
        name = f"soak control ({c['server']} × {c.get('servers', 1)}, {c['traffic']} users)"
        p99 = last["p99_ms"] / first["p99_ms"] if first["p99_ms"] else None
        halves = half_medians(c["rows"], "p99_ms")
        out += [
            # not one of #19's targets: the same ratio for a server that keeps nothing, the same run;
            # what the harness and the machine alone do to it
            (f"{name}: last/first window p99 (no target; the machine and the harness alone)",
             f"{p99:.2f}" if p99 else "-", None),
            (f"{name}: last/first half's median window p99 (no target)", f"{halves:.2f}" if halves else "-", None),
            (f"{name}: largest / smallest window p99 (no target)", _spread(c["rows"]), None),
        ]
    for e in results.get("soak", []):
        h = _halves(e)
        if h is None:
            continue
        first, mid, last = h
        name = f"soak, {e['workers']} worker(s), {e['traffic']}" + (", RLS" if e.get("protocol") == "rls" else "")
        tput = last["rps"] / first["rps"] if first["rps"] else None
        p99 = last["p99_ms"] / first["p99_ms"] if first["p99_ms"] else None
        growth = max((b - a) / a for a, b in zip(mid["rss"], last["rss"]))
        worst = (last["p99_worst_ms"] / first["p99_worst_ms"]) if first.get("p99_worst_ms") and last.get("p99_worst_ms") else None
        cpu = (last["cpu_us"] / first["cpu_us"]) if first.get("cpu_us") and last.get("cpu_us") else None
        wait = (f"{last['wait_ms_per_s']:.0f} / {first['wait_ms_per_s']:.0f} ms/s"
                if "wait_ms_per_s" in first and "wait_ms_per_s" in last else "-")
        # the machine's speed for the same Python work (bench.tools.Yardstick), and the workers' CPU per
        # request measured in it: what of a rise in CPU per request is the host's
        stick = (last["yardstick_us"] / first["yardstick_us"]
                 if first.get("yardstick_us") and last.get("yardstick_us") else None)
        own = cpu / stick if cpu and stick else None
        halves = half_medians(e["rows"], "p99_ms")
        drain = e.get("drain_seconds")
        out += [
            (f"{name}: last/first window throughput ≥ 0.95", f"{tput:.3f}" if tput else "-",
             None if tput is None else tput >= 0.95),
            (f"{name}: last/first window p99 ≤ 1.2", f"{p99:.2f}" if p99 else "-", None if p99 is None else p99 <= 1.2),
            (f"{name}: RSS growth over the last half < 5 %", f"{100 * growth:+.1f} %", growth < 0.05),
            # the statistic this report judged by before it pooled the workers' requests
            (f"{name}: last/first window p99 of the worst worker (no target; judged by until 2026-12-03)",
             f"{worst:.2f}" if worst else "-", None),
            # not one of #19's targets: a trend in p99 rather than two single windows (each one minute of
            # a shared machine's scheduling)
            (f"{name}: last/first half's median window p99 (no target; 1.0 = no trend)",
             f"{halves:.2f}" if halves else "-", None),
            # not one of #19's targets: how far a window's p99 moves in this run, beside the control's
            (f"{name}: largest / smallest window p99 (no target)", _spread(e["rows"]), None),
            # not one of #19's targets: the cost per request, the same last as first if nothing grows
            (f"{name}: last/first window CPU per request (no target; 1.0 = no growth)",
             f"{cpu:.2f}" if cpu else "-", None),
            # not one of #19's targets: how long the busiest loop waited for a core, last window and first; a
            # window's p99 moves with it (a machine busier in one minute than in the other)
            (f"{name}: last / first window's wait for a core (no target)", wait, None),
            # not one of #19's targets: the same Python work's CPU, last window over first (1.0 = the machine
            # ran Python as fast), and the workers' CPU per request divided by it (1.0 = their cost did not grow)
            (f"{name}: last/first window yardstick, the machine's CPU for the same Python work (no target)",
             f"{stick:.2f}" if stick else "-", None),
            (f"{name}: last/first window CPU per request in yardstick units (no target; 1.0 = no growth)",
             f"{own:.2f}" if own else "-", None),
            (f"{name}: no backlog: every update handled ≤ {DRAIN_TARGET:g} s after the load", _s(drain),
             None if drain is None else drain <= DRAIN_TARGET),
        ]
    return out


def controls(results: dict) -> list[dict]:
    """The control runs of a soak phase: one per worker count; a single one in results from before
    2026-12-05 15:30 (``soak_control``), one bare handler on one core."""
    if "soak_controls" in results:
        return results["soak_controls"]
    return [results["soak_control"]] if results.get("soak_control") else []


def _spread(rows: list[dict]) -> str:
    p99s = [r["p99_ms"] for r in rows if r["p99_ms"]]
    return f"{max(p99s) / min(p99s):.2f}" if p99s else "-"


def half_medians(rows: list[dict], column: str) -> float | None:
    """The median of ``column`` over the last half of the windows over its median over the first half
    (the middle window of an odd count in neither)."""
    k = len(rows) // 2
    if not k:
        return None
    first, last = statistics.median(r[column] for r in rows[:k]), statistics.median(r[column] for r in rows[-k:])
    return last / first if first else None


def _2f(x) -> str:
    """Two decimals, or "-" for a figure not measured (seconds of lag, ms of p99)."""
    return "-" if x is None else f"{x:.2f}"


def _us(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _count(n) -> str:
    return "-" if n is None else f"{n:,}"


def _gc(row: dict) -> str:
    if "gc_seconds" not in row:  # a run from before the soak reported it
        return "-"
    return f"{row['gc_seconds'] * 1e3:,.0f} ({row['gc_full']}, ≤ {_pause(row['gc_longest'])})"


def _wait(row: dict) -> str:
    if "wait_ms_per_s" not in row:  # a run from before the soak reported it
        return "-"
    return f"{row['wait_ms_per_s']:.0f} ({row['steal_pct']:.1f} %)"


def _stick(row: dict) -> str:
    return _us(row.get("yardstick_us"))  # "-": a run from before the soak read it


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def markdown(results: dict) -> list[str]:
    runs = results.get("soak") or []
    if not runs and not controls(results):
        return []
    out = ["## Soak: minutes of fixed load, a row per window", "",
           f"Rule C = {CAPACITY:g}, R = {RATE:g}/s; buckets expire {EXPIRE_AFTER:g} s after they are full and idle "
           f"(sweep every {EXPIRE_CHECK:g} s); decoded cache {CACHE_KEYS:,} keys per worker. Offered: a fixed share of the max load measured just before on the "
           "same workers. p50, p99: of every request the window answered, all workers pooled (p99 within "
           "0.01 percentile of each worker's run, never below the exact one); p99 worst: the worst worker's own p99, an upper bound "
           "of it (the only p99 this report had until 2026-12-03). RSS, RocksDB (its memory: memtables, block caches, index "
           "and filter blocks; part of the RSS), Python blocks (objects Python has allocated, sys.getallocatedblocks) and store (the worker's data directory): the largest worker's. Keys: cached (decoded cache, all workers), own (admitted, not yet seen back from "
           "Kafka), table (the largest worker's active partitions). Backlog: update-topic records no merge agent "
           "had handled yet, right after the window's load; merge lag: an update's produce time to its merge by "
           "an agent, p99 of each worker's last 4,096 merged updates (the worst worker's). CPU: user + system time of all workers in the window per request answered; broker CPU: "
           "the same for the Kafka broker the bench started. GC: the time the worker that spent most in Python's "
           "garbage collector spent there in the window, its full (generation 2) passes, and the longest pass of any "
           "worker, as the histogram bound it fits under (a pass holds the whole event loop). Core wait: the most any "
           "worker's event loop spent runnable but waiting for a core, ms per second of the window (the scheduler's "
           "run_delay), and in brackets the share of the machine's CPU time the hypervisor gave to other guests "
           "(steal): a request waits while its loop does. Yardstick: the CPU µs a fixed piece of pure-Python work "
           "(the kind a worker does per request) took on the workers' cores during the window, median of a reading "
           "every 0.25 s (bench.tools.Yardstick): when it rises, the host ran Python slower, and a rise of the workers' CPU "
           "per request that it shares is the host's, not a cost of theirs that grows.", ""]
    for c in controls(results):
        n = c.get("servers", 1)
        where = ("on the core one worker gets" if n == 1 else
                 f"on the cores {n} workers share with the load generators and the broker, each with its own wrk")
        out += [f"### Control: the {c['server']} × {n} (bench.servers ceiling), {c['traffic']} users: max "
                f"{c.get('max_rps', 0):,.0f} req/s, offered {c.get('offered', 0):,.0f} req/s", "",
                f"The same harness and share of its own max as the {n}-worker runs, {where}, against "
                "servers that keep nothing per request: their windows differ only by the machine and the load "
                "generator. p99: " + ("of every request, pooled as the workers' are; core wait: the most any of "
                                      "them waited" if "servers" in c else "wrk's own for the window") + ".", "",
                "| t (s) | req/s | CPU µs/req | p50 ms | p99 ms | core wait ms/s (steal) | yardstick µs | errors |",
                "|---|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            out.append(f"| {r['t']:.0f} | {r['rps']:,.0f}{' (saturated)' if r['saturated'] else ''} | "
                       f"{_us(r.get('cpu_us'))} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_wait(r)} | {_stick(r)} | "
                       f"{r['errors']:,} |")
        out.append("")
    for e in runs:
        through = " through RLS (ghz; req/s: calls/s; 429s: OVER_LIMIT)" if e.get("protocol") == "rls" else ""
        out += [f"### {e['workers']} worker(s), {e['traffic']} users{through}: max {e.get('max_rps', 0):,.0f} req/s, "
                f"offered {e.get('offered', 0):,.0f} req/s; drained {_s(e.get('drain_seconds'))} after the load", "",
                "| t (s) | req/s | CPU µs/req | broker CPU µs/req | p50 ms | p99 ms | p99 worst ms | GC ms (full passes, longest) | core wait ms/s (steal) | yardstick µs | 429s | errors | RSS MiB | RocksDB MiB | Python blocks | store MiB | backlog | merge lag p99 s | cached | own | table |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in e["rows"]:
            out.append(f"| {r['t']:.0f} | {r['rps']:,.0f}{' (saturated)' if r['saturated'] else ''} | "
                       f"{_us(r.get('cpu_us'))} | {_us(r.get('broker_cpu_us'))} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_2f(r.get('p99_worst_ms'))} | {_gc(r)} | {_wait(r)} | {_stick(r)} | {r['non_2xx']:,} | {r['errors']:,} | "
                       f"{r['rss_max'] / 2**20:.0f} | {_mib(r.get('rocksdb_max'))} | {_count(r.get('py_blocks_max'))} | {r['store_max'] / 2**20:.1f} | {r['backlog']:,} | "
                       f"{_2f(r.get('merge_lag_p99'))} | {r['cached']:,} | {r['own']:,} | {r['table']:,} |")
        out.append("")
    return out
