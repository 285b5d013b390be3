"""``python -m bench``: the whole benchmark in one go.

Phases, in order (each starts and stops its own processes):

1. ``ceiling``: a bare aiohttp handler (``bench.servers ceiling``), one process.
2. ``redis``: the same aiohttp app deciding through Redis (Lua token bucket).
3. ``worker``: one bucketstream worker: unique users and one hot user, Kafka
   messages per request, memory per bucket, and (``--profile``) py-spy profiles.
   ``rls``: one worker's Envoy rate limit service (gRPC, ghz) beside its own
   ``POST /protected`` (wrk), one hot user, in the same run; unique users; p99
   at half load (``bench.grpcload``).
4. ``replication``: three workers under load, replication delay from ``/stats``.
5. ``recovery``: N keys written straight to the table changelog, then a fresh
   worker's time from process start to ``/readyz`` 200.
6. ``soak``: minutes of fixed load, one worker then three, new users and a
   skewed mix, with buckets expiring during the run: a row per minute
   (``bench.soak``); before each worker count, its control: as many bare
   handlers of phase 1 under the same harness, placed on the cores as the
   workers are, to read the workers' minute-to-minute p99 against.

Every server under test is pinned to one core, and wrk (one thread), the
Kafka broker and redis-server to the other (``--no-pin`` turns that off), so
"one process" means the same thing for all three designs. wrk is the same
binary and the same Lua script for every target; fixed offered loads are
fractions of the ceiling's measured throughput, the same absolute rates for
every target.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench import loadgen, profile, report, scaleout, soak
from bench.tools import (BenchError, Procs, cpu_seconds, cpu_sets, dir_bytes, ensure_tools, pin, python, rss_bytes,
                         uptime, wait_http)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
PHASES = ("ceiling", "redis", "worker", "rls", "limits", "replication", "scaleout", "recovery", "soak")

#: A fixed-load run after which a worker's Kafka writes go on longer than this (s) was not sustainable.
BACKLOG_SECONDS = 3.0

#: Every bucket in the throughput runs has room for every request: the bench
#: measures the cost of deciding (and of admitting, the expensive answer),
#: not how many 429s a tiny rule hands out.
CAPACITY = 1_000_000.0
RATE = 1_000_000.0


@dataclass
class Config:
    smoke: bool = False
    out: Path = DEFAULT_OUT
    duration: float = 10.0
    warmup: float = 3.0
    repeats: int = 3  # runs at max load per design (the median is reported)
    isolate: bool = True  # fresh workers for unique users' max load and for memory (smoke: one worker)
    connections: int = 50
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    memory_keys: int = 10_000
    recovery_keys: int = 1_000_000
    recovery_timeout: float = 900.0
    replication_duration: float = 15.0
    replication_load: float = 0.1  # total offered to the three workers, as a fraction of the ceiling
    replication_sweep: list[float] = field(default_factory=lambda: [0.025, 0.05])  # lighter loads first
    flush_interval: float | None = None  # the workers' BUCKETSTREAM_FLUSH_INTERVAL (None: their default)
    drain_timeout: float = 120.0  # how long to wait for a worker's Kafka writes to stop after a run
    soak_seconds: float = 300.0  # per soak run (workers x traffic kind)
    soak_window: float = 60.0  # one report row per window
    soak_calibrate: float = 10.0  # the max-load run before a soak that sets its offered load
    # offered, as a share of that max: a max-load run measures HTTP with the Kafka work deferred
    # (a backlog); a worker keeps up with unique users at about 0.4 of it (phase worker's sweep)
    soak_fraction: float = 0.35
    soak_workers: tuple[int, ...] = (1, 3)  # one soak run per worker count and traffic kind
    soak_traffic: tuple[str, ...] = ("unique", "skewed")
    # http: POST /protected (wrk); rls: Envoy's ShouldRateLimit (ghz), the gRPC surface's own path
    soak_protocol: tuple[str, ...] = ("http",)
    # before each worker count, the same load against as many bare aiohttp handlers (bench.soak.control):
    # how much a window's p99 moves when the servers' work does not
    soak_control: bool = True
    soak_control_only: bool = False  # the controls, none of the workers' runs
    worker_settings: dict = field(default_factory=dict)  # --worker-setting: for every worker started
    scaleout_rate: float = 800.0  # req/s offered to the one loaded worker of the scale-out phase
    scaleout_seconds: float = 15.0
    partitions: int = 8
    pin: bool = True
    profile: bool = True
    broker: str | None = None  # host:port of a broker to use instead of starting one
    phases: tuple[str, ...] = PHASES
    report_only: bool = False

    @classmethod
    def smoke_mode(cls, **kw) -> "Config":
        return cls(smoke=True, duration=1.0, warmup=0.0, repeats=1, isolate=False, fractions=[0.5], memory_keys=1_000,
                   recovery_keys=1_000, recovery_timeout=120.0, replication_duration=1.0, profile=False,
                   replication_sweep=[], soak_seconds=4.0, soak_window=2.0, soak_calibrate=1.0,
                   scaleout_rate=200.0, scaleout_seconds=1.0,
                   drain_timeout=2.0, **kw)


_LOG = threading.Lock()


def log(msg: str) -> None:
    with _LOG:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.procs = Procs()
        self.server_cpus, self.gen_cpus = cpu_sets(cfg.pin)
        self.work = Path(tempfile.mkdtemp(prefix="bucketstream-bench-"))
        self.raw = cfg.out / "raw"
        self.results: dict = {"runs": [], "replication": {}, "memory": {}, "recovery": {},
                              "profiles": {}, "config": {}, "meta": {}}
        self.broker = None
        self.own_broker = False
        self.pools: list = []
        self._seq = 0
        self._broker_future: concurrent.futures.Future | None = None
        self.pids: list[int] = []  # every worker started (for the smoke test's leftover check)
        self.cpu_pids: dict[str, int] = {}  # processes whose CPU time each recorded run measures
        self.probe = None  # bench.kafka.Probe, once a phase counts Kafka records

    # -- helpers -------------------------------------------------------------------------
    def prefix(self, tag: str) -> str:
        self._seq += 1
        return f"{tag}{self._seq}-{uuid.uuid4().hex[:6]}-"

    def wrk(self, port: int, target: str, scenario: str, duration: float | None = None, rate: float = 0.0,
            record: bool = True, kafka_app: str | None = None, kafka_workers=(), **kw) -> loadgen.Run:
        """One wrk run; with ``kafka_app``, also the records it made the app write to Kafka
        (topic end offsets once quiet before and after, and how long the writes went on)."""
        before = self.quiet_totals(kafka_app, kafka_workers)[0] if kafka_app else None
        pids = dict(self.cpu_pids) if record else {}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        run = loadgen.wrk(port, target=target, scenario=scenario, duration=duration or self.cfg.duration,
                          workdir=self.work, connections=self.cfg.connections, rate=rate,
                          prefix=kw.pop("prefix", None) or self.prefix(scenario[0]), cpus=self.gen_cpus, **kw)
        entry = run.as_dict()
        entry["cpu_seconds"] = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        if kafka_app:
            after, drain = self.quiet_totals(kafka_app, kafka_workers)
            entry["kafka"] = kafka_entry([run], before, after, 1, drain)
            entry["kafka"]["drain_timed_out"] = drain >= self.cfg.drain_timeout
        if record:
            self.results["runs"].append(entry)
        state = " SATURATED" if run.saturated else ""
        offered = f"offered {rate:,.0f}/s, " if rate else ""
        extra = ""
        if kafka_app:
            k = entry["kafka"]
            extra = (f"  Kafka {k['updates_per_request']:.3f}+{k['changelog_per_request']:.3f} rec/req, "
                     f"writes went on {k['drain_seconds']:.1f}s")
        log(f"  {target:12s} {scenario:6s} {offered}got {run.rps:8,.0f} req/s  p50 {run.p50_ms:7.2f} ms  "
            f"p99 {run.p99_ms:7.2f} ms  errors {run.errors}{state}{extra}")
        return run

    def max_load(self, port: int, target: str, scenario: str, repeats: int | None = None, **kw) -> loadgen.Run:
        """As fast as it goes, ``repeats`` times (other jobs on the machine come and go): the
        median run is the one recorded; every run's req/s is kept with it."""
        repeats = self.cfg.repeats if repeats is None else repeats
        runs, entries = [], []
        for i in range(max(1, repeats)):
            runs.append(self.wrk(port, target, scenario, **kw))
            entries.append(self.results["runs"].pop())
        median = self.record_median(runs, entries)
        if len(runs) > 1:
            log(f"  {target:12s} {scenario:6s} median of {len(runs)}: {median.rps:,.0f} req/s")
        return median

    def record_median(self, runs: list[loadgen.Run], entries: list[dict]) -> loadgen.Run:
        """Record the entry of the median run by req/s, with every run's req/s kept in it."""
        order = sorted(range(len(runs)), key=lambda i: runs[i].rps)
        median = order[len(order) // 2]
        entries[median]["repeats"] = [r.rps for r in runs]
        self.results["runs"].append(entries[median])
        return runs[median]

    def idle_cpu(self, target: str) -> None:
        """Share of a core each measured process uses with no request at all (timers, Kafka fetch loops)."""
        seconds = 1.0 if self.cfg.smoke else 5.0
        pids = dict(self.cpu_pids)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(seconds)
        idle = {name: (cpu_seconds(pid) - before[name]) / seconds for name, pid in pids.items()}
        self.results.setdefault("idle_cpu", {})[target] = idle
        log(f"  {target}: idle CPU " + ", ".join(f"{name} {x * 100:.0f}%" for name, x in idle.items()))

    def warm(self, port: int, target: str) -> None:
        if self.cfg.warmup > 0:
            self.wrk(port, target, "hot", duration=self.cfg.warmup, record=False)

    def sweep(self, port: int, target: str, scenario: str, base: float, kafka_app: str | None = None,
              kafka_workers=()) -> None:
        """Fixed offered loads at the configured fractions of ``base`` (the ceiling's req/s), lowest
        first; stops at the first one the target could not sustain (every higher one would not
        either): wrk could not offer it (saturated), or the worker's Kafka writes went on
        for more than ``BACKLOG_SECONDS`` after the load (a backlog that grows while it lasts)."""
        def kept_up(rate: float) -> bool:
            run = self.wrk(port, target, scenario, rate=rate, kafka_app=kafka_app, kafka_workers=kafka_workers)
            entry = self.results["runs"][-1]
            entry["backlog"] = "kafka" in entry and entry["kafka"]["drain_seconds"] > BACKLOG_SECONDS
            return not (run.saturated or entry["backlog"])

        for i, frac in enumerate(self.cfg.fractions):
            if kept_up(frac * base):
                continue
            why = "saturated" if self.results["runs"][-1]["saturated"] else "Kafka backlog"
            for rest in self.cfg.fractions[i + 1:]:
                self.results["runs"].append({"target": target, "scenario": scenario, "offered": rest * base,
                                             "skipped": f"{why} at a lower load"})
            if i == 0:
                # not even the lowest load: halve it until one is kept up with (at most 3 times)
                rate = frac * base
                for _ in range(3 if self.cfg.isolate else 0):
                    rate /= 2
                    if kept_up(rate):
                        break
            break

    def profile_run(self, pid: int, port: int, target: str, scenario: str, name: str, rate: float = 0.0) -> None:
        """py-spy on ``pid`` during one wrk run (not recorded: sampling costs the target a little)."""
        if not profile.available():
            log("  py-spy not found: no profile (pip install py-spy)")
            return
        out = self.raw / f"profile-{target}-{scenario}{'-%d' % rate if rate else ''}.txt"
        out.unlink(missing_ok=True)
        spy = profile.record(pid, self.cfg.duration - 1, out)
        pin(spy.pid, self.gen_cpus)
        time.sleep(0.5)
        run = self.wrk(port, target, scenario, rate=rate, record=False)
        profile.wait(spy, 30)
        if out.exists():
            summary = profile.summarize(out)
            summary["rps_while_profiled"] = run.rps
            self.results["profiles"][name] = summary

    @property
    def ceiling(self) -> float:
        runs = [r for r in self.results["runs"] if r["target"] == "ceiling" and r["offered"] == 0
                and r["scenario"] == "unique"]
        if not runs:
            raise BenchError("the ceiling phase must run before the others (it sets the offered loads)")
        return runs[0]["rps"]

    # -- phases ------------------------------------------------------------------------
    def phase_ceiling(self) -> None:
        log("phase 1/6: ceiling, a bare aiohttp handler in one process")
        from tests.cluster import free_port

        port = free_port()
        proc = self.procs.start("ceiling", [python(), "-m", "bench.servers", "ceiling", "--port", str(port)],
                                self.raw / "ceiling.log", cpus=self.server_cpus)
        try:
            wait_http(port, "/healthz", 30, proc)
            self.cpu_pids = {"server": proc.pid}
            self.warm(port, "ceiling")
            self.idle_cpu("ceiling")
            base = self.max_load(port, "ceiling", "unique").rps
            self.sweep(port, "ceiling", "unique", base)
            if self.cfg.profile:
                self.profile_run(proc.pid, port, "ceiling", "unique", "(1) ceiling, max load")
        finally:
            self.cpu_pids = {}
            self.procs.stop(proc)

    def phase_redis(self) -> None:
        log("phase 2/6: centralized design, the same aiohttp app deciding through Redis (Lua token bucket)")
        from tests.cluster import free_port

        rport, port = free_port(), free_port()
        redis = self.procs.start("redis-server", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                                  "--save", "", "--appendonly", "no", "--daemonize", "no",
                                                  "--dir", str(self.work)],
                                 self.raw / "redis.log", cpus=self.gen_cpus)
        app = None
        try:
            app = self.procs.start("redis-app", [python(), "-m", "bench.servers", "redis", "--port", str(port),
                                                 "--redis-port", str(rport), "--capacity", str(CAPACITY),
                                                 "--rate", str(RATE), "--pool", str(self.cfg.connections + 14)],
                                   self.raw / "redis-app.log", cpus=self.server_cpus)
            wait_http(port, "/healthz", 30, app)
            self.cpu_pids = {"server": app.pid, "store": redis.pid}
            self.warm(port, "redis")
            self.idle_cpu("redis")
            base = self.ceiling
            for scenario in ("unique", "hot"):
                self.max_load(port, "redis", scenario)
                self.sweep(port, "redis", scenario, base)
            if self.cfg.profile:
                self.profile_run(app.pid, port, "redis", "unique", "(3) aiohttp + Redis app, unique users, max load")
        finally:
            self.cpu_pids = {}
            if app is not None:
                self.procs.stop(app)
            self.procs.stop(redis)

    def start_broker(self) -> None:
        from tests.cluster import Broker, free_port_pair

        if self.cfg.broker:
            host, _, port = self.cfg.broker.rpartition(":")
            self.broker = Broker(port=int(port), state_dir=self.work / "external-broker")
            return
        self.broker = _PinnedBroker(port=free_port_pair(), state_dir=self.work / "kafka", cpus=self.gen_cpus)
        self.own_broker = True
        log(f"starting a Kafka broker on 127.0.0.1:{self.broker.port}")
        started = time.monotonic()
        self.broker.start()
        log(f"  broker up in {time.monotonic() - started:.1f}s")

    def broker_pid(self) -> int | None:
        """The broker's JVM, when this bench started it (its CPU counts as the design's)."""
        if not self.own_broker:
            return None
        try:
            return int((self.broker.state_dir / "pid").read_text())
        except (OSError, ValueError):
            return None

    def pool(self, tag: str, **settings):
        """Workers of a new app; ``settings`` override the bench's (capacity, rate, ...)."""
        from tests.cluster import WorkerPool

        tmp = self.work / tag
        tmp.mkdir(parents=True, exist_ok=True)
        extra = {"flush_interval": self.cfg.flush_interval} if self.cfg.flush_interval else {}
        extra = {"capacity": CAPACITY, "rate": RATE, "partitions": self.cfg.partitions, **extra, **settings,
                 **self.cfg.worker_settings}
        p = WorkerPool(self.broker, tmp, app_id=f"bench-{tag}-{uuid.uuid4().hex[:6]}", **extra)
        self.pools.append(p)
        return p

    def stop_pool(self, p) -> None:
        for w in p.workers:  # keep the logs of the last run
            try:
                shutil.copy(w.log_path, self.raw / w.log_path.name.replace("worker-", f"{p.app_id}-worker-"))
            except OSError:
                pass
        t0 = time.monotonic()
        self.pids += [w.proc.pid for w in p.workers if w.proc is not None]
        # the results do not depend on a graceful Faust shutdown: SIGTERM every
        # worker at once, SIGKILL what is still there after a few seconds
        for w in p.workers:
            try:
                w.signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for w in p.workers:
            try:
                w.stop(timeout=2.0)
            except Exception:
                w.kill9()
        self.pools.remove(p)
        log(f"  stopped {len(p.workers)} worker(s) in {time.monotonic() - t0:.1f}s")

    def kafka_totals(self, app_id: str) -> dict[str, int]:
        if self.probe is None:
            from bench.kafka import Probe

            self.probe = Probe(self.broker.bootstrap)
        return self.probe.totals(app_id)

    def quiet_totals(self, app_id: str, workers=(), timeout: float | None = None) -> tuple[dict[str, int], float]:
        """Topic totals once the app has stopped writing, and how long that took: the end
        offsets stayed put for 0.5 s and no worker holds an admission Kafka has not shown
        it back (its producer buffer may hold a backlog while the offsets stand still)."""
        started = time.monotonic()
        timeout = self.cfg.drain_timeout if timeout is None else timeout
        last = self.kafka_totals(app_id)
        while time.monotonic() - started < timeout:
            time.sleep(0.5)
            now = self.kafka_totals(app_id)
            if now == last and all(stats(w)["own_unreflected_keys"] == 0 for w in workers):
                break
            last = now
        return last, time.monotonic() - started

    def settle(self, w, timeout: float = 30.0) -> dict:
        """Wait until the worker has published and seen back everything it admitted."""
        deadline = time.monotonic() + timeout
        while True:
            s = stats(w)
            if s["own_unreflected_keys"] == 0 or time.monotonic() > deadline:
                return s
            time.sleep(0.2)

    def table_settled(self, w, timeout: float = 60.0) -> int:
        """The worker's table size once it has stopped changing (the merge agent caught up)."""
        deadline = time.monotonic() + timeout
        last = stats(w)["active_keys"]
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = stats(w)["active_keys"]
            if now == last:
                return now
            last = now
        return last

    @contextlib.contextmanager
    def fresh_worker(self, tag: str, **settings):
        """One new worker of a new app (fresh table, empty topics), pinned to the server's CPU."""
        p = self.pool(tag, **settings)
        try:
            (w,) = p.start(1)
            pin(w.proc.pid, self.server_cpus)
            yield p.app_id, w
        finally:
            self.cpu_pids = {}
            self.stop_pool(p)

    def measure_cpu_of(self, w) -> None:
        self.cpu_pids = {"server": w.proc.pid}
        broker_pid = self.broker_pid()
        if broker_pid:
            self.cpu_pids["store"] = broker_pid

    def phase_worker(self) -> None:
        """Three fresh workers in turn, so that a Kafka backlog one run leaves behind (unique users
        beyond what the worker sustains) never reaches the next measurement."""
        log("phase 3/6: bucketstream /protected, one worker")
        base = self.ceiling
        with contextlib.ExitStack() as stack:
            app_id, w = stack.enter_context(self.fresh_worker("single"))
            self.results["meta"]["worker_app_id"] = app_id
            self.results["memory"]["rss_empty_worker"] = rss_bytes(w.proc.pid)
            self.measure_cpu_of(w)
            self.warm(w.port, "bucketstream")
            self.settle(w)
            self.idle_cpu("bucketstream")
            k = {"kafka_app": app_id, "kafka_workers": [w]}
            self.max_load(w.port, "bucketstream", "hot", **k)
            self.sweep(w.port, "bucketstream", "hot", base, **k)
            self.sweep(w.port, "bucketstream", "unique", base, **k)
            if self.cfg.isolate:
                stack.close()
                log("  unique users at max load, on a fresh worker (it may leave a backlog behind)")
                app_id, w = stack.enter_context(self.fresh_worker("unique-max"))
                self.warm(w.port, "bucketstream")
                self.settle(w)
                self.measure_cpu_of(w)
            k = {"kafka_app": app_id, "kafka_workers": [w]}
            self.paired_max(w, k)
            self.cpu_pids = {}
            # memory and profiles at a unique-user load the worker kept up with (half of it)
            ok, failed = report.sustained(self.results, "bucketstream", "unique")
            rate = ok / 2 if ok else (failed or self.cfg.fractions[0] * base) / 4
            # a run starved by other jobs on the machine (0 req/s) must not leave no load at all
            rate = max(rate, 50.0)
            # on this worker, with the default settings the ratio above is measured with: the
            # memory worker below publishes every admission, which a default worker does not
            if self.cfg.profile:
                self.profile_worker(w, rate)
            # always a fresh worker that publishes every admission: memory per bucket in the table
            stack.close()
            app_id, w = stack.enter_context(self.fresh_worker("memory", hold_share=0))
            self.phase_memory(w, rate)

    def paired_max(self, w, k: dict) -> None:
        """Unique users' max load, each run right after a hot user's on the same worker: the ratio
        of the two (#15: a new user's request costs at most about 1.1× a cached user's) from runs
        seconds apart, where the hot-user median above may be minutes and a worker away, and this
        machine's speed drifts by more than the ratio's margin over that. The median unique run is
        the one recorded (the phase's unique max); every pair is kept."""
        pairs, runs, entries = [], [], []
        for _ in range(max(1, self.cfg.repeats)):
            hot = self.wrk(w.port, "bucketstream", "hot", record=False)
            runs.append(self.wrk(w.port, "bucketstream", "unique", **k))
            entries.append(self.results["runs"].pop())
            pairs.append({"hot": hot.rps, "unique": runs[-1].rps,
                          "ratio": runs[-1].rps / hot.rps if hot.rps else None})
        self.record_median(runs, entries)
        self.results["pairs"] = pairs
        ratios = sorted(x["ratio"] for x in pairs if x["ratio"] is not None)
        if ratios:
            log(f"  bucketstream unique / hot, back to back on one worker: "
                + ", ".join(f"{x:.2f}" for x in ratios) + f" (median {ratios[len(ratios) // 2]:.2f})")

    def phase_rls(self) -> None:
        """Envoy's rate limit service on one fresh worker, beside the same worker's POST /protected."""
        from bench import grpcload
        from tests.cluster import free_port

        log("phase rls: Envoy's rate limit service (gRPC ShouldRateLimit, ghz) beside POST /protected, one worker")
        try:
            binary = grpcload.build_ghz()
        except RuntimeError as exc:
            log(f"  skipped: {exc}")
            self.results["rls"] = {"skipped": str(exc)}
            return
        protoset = grpcload.write_protoset(self.work / "rls.protoset")
        shape = {"concurrency": self.cfg.connections, "connections": 4}
        grpc_port = free_port()
        p = self.pool("rls", grpc_port=grpc_port)

        def rls(scenario: str, duration: float | None = None, rate: float = 0.0) -> "grpcload.Run":
            run = grpcload.ghz(binary, protoset, grpc_port, scenario, duration or self.cfg.duration,
                               self.prefix("rls"), rate=rate, cpus=self.gen_cpus, **shape)
            state = " SATURATED" if run.saturated else ""
            offered = f"offered {rate:,.0f}/s, " if rate else ""
            log(f"  {'rls':12s} {scenario:6s} {offered}got {run.rps:8,.0f} calls/s  p50 {run.p50_ms or 0:7.2f} ms  "
                f"p99 {run.p99_ms or 0:7.2f} ms  errors {run.errors}{state}")
            return run

        def median(runs):
            return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]

        try:
            (w,) = p.start(1)
            pin(w.proc.pid, self.server_cpus)
            self.warm(w.port, "bucketstream")
            if self.cfg.warmup > 0:
                rls("hot", duration=self.cfg.warmup)
            self.settle(w)
            repeats = max(1, self.cfg.repeats)
            protected = median([self.wrk(w.port, "bucketstream", "hot", record=False) for _ in range(repeats)])
            hot = median([rls("hot") for _ in range(repeats)])
            unique = rls("unique")
            self.settle(w, timeout=self.cfg.drain_timeout)
            half = rls("hot", rate=hot.rps / 2)
            self.results["rls"] = {
                "protected_hot": {"offered": 0, "rps": protected.rps, "p50_ms": protected.p50_ms,
                                  "p99_ms": protected.p99_ms, "errors": protected.errors},
                "rls_hot": hot.as_dict(), "rls_unique": unique.as_dict(), "rls_half": half.as_dict(),
                "ghz": {"binary": binary, **shape},
            }
            log(f"  RLS / /protected, one hot user: {hot.rps:,.0f} / {protected.rps:,.0f} = "
                f"{hot.rps / protected.rps:.2f}x; p99 at half load ({half.offered:,.0f}/s) {half.p99_ms or 0:.2f} ms")
        finally:
            self.stop_pool(p)

    def phase_limits(self) -> None:
        """The hot path with one and with two limits per request, side by side (#18): a hot
        user at max load on a fresh worker each, CPU seconds of the worker per request.

        Both rules have capacity = rate = 1,000,000 per limit, so every request is an
        admission (of both limits); the runs alternate (1, 2, 1, 2 ...) so that other
        jobs on the machine weigh on both alike, and the median of each is reported."""
        log("phase limits: one limit vs two limits per request (hot user, max load)")
        files = {1: f"[default]\ncapacity = {CAPACITY}\nrate = {RATE}\n",
                 2: (f"[default]\nlimits = [{{ name = \"second\", capacity = {CAPACITY}, rate = {RATE} }},"
                     f" {{ name = \"day\", capacity = {CAPACITY * 10}, rate = {RATE} }}]\n")}
        workers, pools = {}, []
        for n, text in files.items():
            path = self.work / f"limits-{n}.toml"
            path.write_text(text)
            p = self.pool(f"limits{n}", limits=path)
            pools.append(p)
            (w,) = p.start(1)
            pin(w.proc.pid, self.server_cpus)
            self.warm(w.port, "bucketstream")
            self.settle(w)
            workers[n] = w
        per_request: dict[int, list[float]] = {1: [], 2: []}
        rps: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(max(1, self.cfg.repeats)):
            for n, w in workers.items():
                before = cpu_seconds(w.proc.pid)
                run = self.wrk(w.port, "bucketstream", "hot", record=False, prefix=self.prefix(f"l{n}"))
                cpu = cpu_seconds(w.proc.pid) - before
                if run.requests:
                    per_request[n].append(cpu / run.requests)
                    rps[n].append(run.rps)
                log(f"    {n} limit(s): {cpu / max(1, run.requests) * 1e6:.0f} µs CPU/request")
        out = {}
        for n in workers:
            out[str(n)] = {"cpu_per_request": _median(per_request[n]) if per_request[n] else None,
                           "rps": _median(rps[n]) if rps[n] else None, "runs": per_request[n]}
        one, two = out["1"]["cpu_per_request"], out["2"]["cpu_per_request"]
        out["ratio"] = two / one if one and two else None
        self.results["limits"] = out
        log(f"  two limits / one limit, CPU per request: {out['ratio'] or float('nan'):.2f}x (target <= 1.3x)")
        for p in pools:
            self.stop_pool(p)

    def phase_memory(self, w, rate: float) -> None:
        """RSS and RocksDB growth of a fresh worker while N new users each take one token; every
        admission published (hold_share 0): this measures a bucket in the table."""
        n = self.cfg.memory_keys
        log(f"  memory: {n:,} new users on a fresh worker, at {rate:,.0f} req/s")
        keys0 = self.table_settled(w)
        rss0, disk0 = rss_bytes(w.proc.pid), dir_bytes(w.data_dir)
        run = self.wrk(w.port, "bucketstream", "unique", duration=n / rate * 1.1 + 1, rate=rate, space=n,
                       limit=n + self.cfg.connections, prefix=self.prefix("mem"), record=False)
        s0 = self.settle(w, timeout=self.cfg.drain_timeout)
        keys1 = self.table_settled(w)
        s = stats(w)
        rss1, disk1 = rss_bytes(w.proc.pid), dir_bytes(w.data_dir)
        added = keys1 - keys0
        self.results["memory"].update({
            "keys_added": added, "keys_before": keys0, "cached_keys": s["cached_keys"], "rate": run.rps,
            "rss_before": rss0, "rss_after": rss1, "rss_per_key": (rss1 - rss0) / max(added, 1),
            "disk_before": disk0, "disk_after": disk1, "disk_per_key": (disk1 - disk0) / max(added, 1),
            "cache_limit": 200_000, "own_unreflected_after": s0["own_unreflected_keys"], "touched": n,
        })
        m = self.results["memory"]
        log(f"  memory: +{added:,} keys: RSS +{m['rss_per_key']:.0f} B/key, RocksDB dir +{m['disk_per_key']:.0f} B/key")

    def profile_worker(self, w, rate: float) -> None:
        """Profiles of a worker with default settings: hot user at max load; unique users at a load
        the worker keeps up with, then at max load."""
        log("  profiles (py-spy)")
        self.profile_run(w.proc.pid, w.port, "bucketstream", "hot", "(2) bucketstream worker, hot user, max load")
        self.profile_run(w.proc.pid, w.port, "bucketstream", "unique",
                         f"(2) bucketstream worker, unique users, {rate:,.0f} req/s offered", rate=rate)
        self.profile_run(w.proc.pid, w.port, "bucketstream", "unique",
                         "(2) bucketstream worker, unique users, max load")

    def phase_replication(self) -> None:
        log("phase 4/6: replication delay, three workers under load, every admission published")
        # The delay of what is published. With the default rule nothing here would be: every
        # bucket has room for every request (C = R = 10^6), so the workers hold every admission
        # back (bucketstream.hold) and the phase had no sample at all. hold_share=0 publishes
        # each admission, as the scale-out phase's "publish all" does.
        p = self.pool("three", hold_share=0.0)
        sweep = self.results.setdefault("replication_sweep", [])
        try:
            workers = p.start(3)
            for scenario in ("hot", "unique"):
                for fraction in self.cfg.replication_sweep:
                    entry = self.replication_run(p, workers, scenario, fraction * self.ceiling)
                    sweep.append({"scenario": scenario, "fraction": fraction, **{
                        k: entry[k] for k in ("offered_total", "achieved_total", "histogram", "stalls", "busy",
                                              "p99_ms_http")}})
                entry = self.replication_run(p, workers, scenario, self.cfg.replication_load * self.ceiling)
                self.results["replication"][scenario] = entry
        finally:
            self.stop_pool(p)

    def replication_run(self, p, workers, scenario: str, total: float) -> dict:
        """One run of ``scenario`` at ``total`` req/s spread over the three workers."""
        before, _ = self.quiet_totals(p.app_id, workers)
        all0 = [histograms(w) for w in workers]
        hist0 = [h["delay"] for h in all0]
        prefix = self.prefix("repl")
        busy0 = machine_busy()
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(self.wrk, w.port, f"bucketstream x3 [{i}]", scenario,
                              self.cfg.replication_duration, total / 3, False, prefix=prefix)
                    for i, w in enumerate(workers)]
            runs = [f.result() for f in futs]
        busy1 = machine_busy()
        per_worker = [stats(w) for w in workers]
        all1 = [histograms(w) for w in workers]
        hist1 = [h["delay"] for h in all1]
        pooled = histogram_quantiles(hist0, hist1)
        lag0, lag1 = [h["loop_lag"] for h in all0], [h["loop_lag"] for h in all1]
        gc0, gc1 = [h["gc_full"] for h in all0], [h["gc_full"] for h in all1]
        after, drain = self.quiet_totals(p.app_id, workers)
        entry = {
            "offered_total": total, "achieved_total": sum(r.rps for r in runs),
            "requests": sum(r.requests for r in runs),
            "p99_ms_http": max(r.p99_ms for r in runs),
            "workers": [{"port": w.port, **s["replication_delay"], "phase_samples": samples(h0, h1),
                         "peer_lag": s.get("peer_lag"), "update_lag": s.get("update_lag"),
                         "return_lag": s.get("return_lag")}
                        for w, s, h0, h1 in zip(workers, per_worker, hist0, hist1)],
            # the whole machine's CPU in use during the run (both cores, every process)
            "busy": (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) if busy1[1] > busy0[1] else None,
        }
        entry["histogram"] = pooled
        # what the delay's tail waits behind: event-loop stretches and full collections
        entry["stalls"] = {
            "loop_lag": histogram_quantiles(lag0, lag1),
            "loop_over_50ms": histogram_over(lag0, lag1, 0.05),
            "loop_over_100ms": histogram_over(lag0, lag1, 0.1),
            "gc_full": histogram_quantiles(gc0, gc1),
            "gc_full_over_50ms": histogram_over(gc0, gc1, 0.05),
            "delay_over_100ms": histogram_over(hist0, hist1, 0.1),
        }
        # /stats summarizes the most recent samples: fewer in this phase means some are older
        entry["mixed_with_earlier"] = any(x["phase_samples"] < x["samples"] for x in entry["workers"])
        delays = [s["replication_delay"] for s in per_worker if s["replication_delay"]["samples"]]
        entry["p50_ms"] = _median([d["p50"] * 1000 for d in delays]) if delays else None
        entry["p99_ms"] = max(d["p99"] * 1000 for d in delays) if delays else None
        entry["max_ms"] = max(d["max"] * 1000 for d in delays) if delays else None
        entry["kafka"] = kafka_entry(runs, before, after, 3, drain)
        h = pooled
        log(f"  replication delay ({scenario}, {total:,.0f} req/s): whole run p50 ≤ {report._le(h['p50_le'])}, "
            f"p99 ≤ {report._le(h['p99_le'])} over {h['samples']} samples, "
            f"{entry['stalls']['delay_over_100ms']} over 100 ms; machine CPU "
            f"{_fmt(100 * entry['busy']) if entry['busy'] is not None else '-'} % busy")
        return entry

    def phase_recovery(self) -> None:
        from bench.kafka import produce_changelog

        n = self.cfg.recovery_keys
        log(f"phase 5/6: recovery of {n:,} keys from the changelog by a fresh worker")
        p = self.pool("recovery")
        try:
            produced = produce_changelog(self.broker.bootstrap, p.app_id, self.cfg.partitions, n, CAPACITY, RATE,
                                         log=log)
            log(f"  produced {n:,} records in {produced['produce_seconds']:.1f}s")
            (w,) = p.start(1, ready=False)
            started = time.monotonic()
            spy = None
            profiling = self.cfg.profile and profile.available()
            out = self.raw / "profile-recovery.txt"
            out.unlink(missing_ok=True)
            healthz = wait_http(w.port, "/healthz", 120, w.proc)
            ready = None
            deadline = started + self.cfg.recovery_timeout
            while time.monotonic() < deadline:
                if profiling and spy is None and time.monotonic() - started > 5:
                    # a 20 s window: sampling pauses the worker, so not the whole recovery
                    spy = profile.record(w.proc.pid, 20, out)
                    pin(spy.pid, self.gen_cpus)
                if w.proc.poll() is not None:
                    raise BenchError(f"the recovering worker exited: {w.log_tail(5)}")
                try:
                    if w.request("GET", "/readyz", timeout=2)[0] == 200:
                        ready = time.monotonic() - started
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            if spy is not None:
                if spy.poll() is None:
                    spy.send_signal(signal.SIGINT)
                profile.wait(spy, 30)
                if out.exists():
                    name = f"(2) fresh worker recovering {n:,} keys from the changelog (20 s from 5 s after start)"
                    self.results["profiles"][name] = profile.summarize(out)
            s = stats(w) if ready is not None else {}
            self.results["recovery"] = {
                **produced, "healthz_seconds": healthz, "ready_seconds": ready,
                "keys_per_second": n / ready if ready else None, "active_keys": s.get("active_keys"),
                "rss_after": rss_bytes(w.proc.pid), "disk_after": dir_bytes(w.data_dir),
                "rss_empty_worker": self.results["memory"].get("rss_empty_worker"),
                "timeout": self.cfg.recovery_timeout,
                "bulk_recovery": s.get("bulk_recovery"),  # what bucketstream/recovery.py loaded, and how fast
            }
            if ready is None:
                log(f"  NOT ready within {self.cfg.recovery_timeout:.0f}s")
            else:
                log(f"  ready in {ready:.1f}s ({n / ready:,.0f} keys/s; web up after {healthz:.1f}s), "
                    f"table holds {s.get('active_keys')} keys")
        finally:
            self.stop_pool(p)

    # -- the whole run -------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        started = time.monotonic()
        self.raw.mkdir(parents=True, exist_ok=True)
        tools = ensure_tools(log)
        self.results["meta"].update(meta(tools, cfg, self.server_cpus, self.gen_cpus))
        self.results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}
        log(f"load average at start: {self.results['meta']['load_start']}")
        try:
            need_broker = any(ph in cfg.phases for ph in ("worker", "rls", "limits", "replication", "scaleout",
                                                          "recovery")) or ("soak" in cfg.phases and cfg.soak_workers
                                                                and not cfg.soak_control_only)
            if need_broker and cfg.smoke:
                # timing does not matter in a smoke run: start the broker while phases 1-2 run
                self._broker_future = concurrent.futures.ThreadPoolExecutor(1).submit(self.start_broker)
            if "ceiling" in cfg.phases or any(ph in cfg.phases for ph in ("redis", "worker", "replication")):
                self.phase_ceiling()
            if "redis" in cfg.phases:
                self.phase_redis()
            if self._broker_future is not None:
                self._broker_future.result()
            elif need_broker:
                self.start_broker()
            if "worker" in cfg.phases:
                self.phase_worker()
            if "rls" in cfg.phases:
                self.phase_rls()
            if "limits" in cfg.phases:
                self.phase_limits()
            if "replication" in cfg.phases:
                self.phase_replication()
            if "scaleout" in cfg.phases:
                scaleout.phase(self, log)
            if "recovery" in cfg.phases:
                self.phase_recovery()
            if "soak" in cfg.phases:
                log("phase 6/6: soak")
                soak.phase(self, log)
        finally:
            self.cleanup()
        self.results["meta"]["load_end"] = uptime()
        self.results["meta"]["pids"] = sorted(set(self.pids + self.procs.started))
        self.results["meta"]["bench_seconds"] = time.monotonic() - started
        report.write(self.results, cfg.out)
        log(f"done in {self.results['meta']['bench_seconds']:.0f}s: {cfg.out / 'results.md'}")
        return self.results

    def cleanup(self) -> None:
        if self._broker_future is not None:
            concurrent.futures.wait([self._broker_future])
        for p in list(self.pools):
            try:
                self.stop_pool(p)
            except Exception as exc:  # keep stopping the rest
                log(f"stopping workers: {exc}")
        self.procs.stop_all()
        if self.probe is not None:
            try:
                self.probe.close()
            except Exception as exc:
                log(f"closing the Kafka probe: {exc}")
        if self.own_broker and self.broker is not None:
            try:
                shutil.copy(self.broker.state_dir / "kafka.log", self.raw / "kafka.log")
            except OSError:
                pass
            self.broker.stop()
        shutil.rmtree(self.work, ignore_errors=True)


class _PinnedBroker:
    """tests.cluster.Broker, started with the load generator's CPUs."""

    def __new__(cls, port: int, state_dir: Path, cpus: set[int] | None):
        from tests.cluster import Broker

        class Pinned(Broker):
            def start(self) -> None:
                import subprocess

                from tests.cluster import KAFKA_SH

                preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
                subprocess.run([str(KAFKA_SH), "start"], env=self._env(), check=True, timeout=180,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec)

        return Pinned(port=port, state_dir=state_dir)


#: Histograms the replication phase reads from each worker's /metrics: name -> (metric, a label it must have)
HISTOGRAMS = {
    "delay": ("bucketstream_replication_delay_seconds", ""),
    "loop_lag": ("bucketstream_event_loop_lag_seconds", ""),
    "gc_full": ("bucketstream_gc_pause_seconds", 'generation="2"'),
}


def histograms(w) -> dict[str, dict[float, float]]:
    """The worker's histograms of HISTOGRAMS so far: upper bound (s) -> cumulative count."""
    status, _, body = w.request("GET", "/metrics", timeout=30)
    out: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    for line in body.decode().splitlines():
        for name, (metric, label) in HISTOGRAMS.items():
            if line.startswith(metric + "_bucket{") and label in line:
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out[name][float(le)] = float(line.split()[-1])
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (jiffies)."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def histogram_over(before: list[dict], after: list[dict], bound: float) -> int:
    """Samples above ``bound`` (a bucket bound) taken between ``before`` and ``after``, summed over workers."""
    return sum(samples(bf, a) - int(a.get(bound, 0) - bf.get(bound, 0)) for a, bf in zip(after, before))


def samples(before: dict, after: dict) -> int:
    """Samples a histogram took between two reads (its +Inf bucket)."""
    inf = float("inf")
    return int(after.get(inf, 0) - before.get(inf, 0))


def histogram_quantiles(before: list[dict], after: list[dict]) -> dict:
    """p50/p99 upper bounds of the samples taken between ``before`` and ``after``, pooled over workers."""
    bounds = sorted(set().union(*after)) if after else []
    cum = [sum(a.get(b, 0) - bf.get(b, 0) for a, bf in zip(after, before)) for b in bounds]
    total = cum[-1] if cum else 0

    def q(x: float):
        if not total:
            return None
        return next(b for b, c in zip(bounds, cum) if c >= x * total)

    return {"samples": int(total), "p50_le": q(0.5), "p99_le": q(0.99)}


def stats(w) -> dict:
    status, _, body = w.request("GET", "/stats", timeout=30)
    if status != 200:
        raise BenchError(f"/stats of worker {w.port} answered {status}")
    return json.loads(body)


def kafka_entry(runs: list[loadgen.Run], before: dict, after: dict, workers: int, drain: float) -> dict:
    requests = sum(r.requests for r in runs)
    updates = after["updates"] - before["updates"]
    changelog = after["changelog"] - before["changelog"]
    return {"workers": workers, "requests": requests, "updates": updates, "changelog": changelog,
            "drain_seconds": drain, "updates_per_request": updates / requests if requests else None,
            "changelog_per_request": changelog / requests if requests else None,
            "total_per_request": (updates + changelog) / requests if requests else None}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def meta(tools: dict, cfg: Config, server_cpus, gen_cpus) -> dict:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": uptime(),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {"faust-streaming": version("faust-streaming"), "aiohttp": version("aiohttp"),
                     "aiokafka": version("aiokafka"), "rocksdict": version("rocksdict"), "redis-py": version("redis"),
                     "hiredis": version("hiredis"), "kafka": os.environ.get("KAFKA_VERSION", "3.9.1"), **tools},
        "pinning": (f"servers under test on CPU {sorted(server_cpus)}, wrk/broker/redis-server on CPU "
                    f"{sorted(gen_cpus)}") if server_cpus else "none",
        "command": "make bench" + ("" if not cfg.smoke else " BENCH_ARGS=--smoke"),
    }


def parse(argv: list[str] | None) -> Config:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="seconds-long run: tiny durations and key counts (tests)")
    ap.add_argument("--out", type=Path, help=f"results directory (default {DEFAULT_OUT.relative_to(ROOT)})")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (default 10; smoke 1)")
    ap.add_argument("--connections", type=int, help="wrk connections (default 50)")
    ap.add_argument("--repeats", type=int, help="runs at max load per design, median reported (default 3; smoke 1)")
    ap.add_argument("--fractions", help="offered loads as fractions of the ceiling, comma-separated "
                                        "(default 0.05,0.1,0.2,0.3,0.5,0.7,0.9)")
    ap.add_argument("--memory-keys", type=int, help="new users touched to measure memory per bucket (default 10000)")
    ap.add_argument("--recovery-keys", type=int, help="keys in the changelog to recover (default 1000000)")
    ap.add_argument("--phases", help=f"comma-separated subset of {','.join(PHASES)} (the ceiling always runs first "
                                     "when a later phase needs its throughput)")
    ap.add_argument("--soak-seconds", type=float, help="seconds of each soak run (default 300; smoke 4)")
    ap.add_argument("--soak-window", type=float, help="seconds per soak report row (default 60; smoke 2)")
    ap.add_argument("--soak-fraction", type=float, help="soak load as a share of the max load (default 0.35)")
    ap.add_argument("--soak-workers", help="comma-separated worker counts of the soak runs (default 1,3)")
    ap.add_argument("--worker-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a worker setting for every worker the bench starts (repeatable), e.g. cache_keys=100000")
    ap.add_argument("--soak-traffic", help="comma-separated traffic kinds of the soak runs (default unique,skewed)")
    ap.add_argument("--soak-protocol", help="comma-separated surfaces the soak drives: http (POST /protected, "
                                            "wrk), rls (Envoy's ShouldRateLimit, ghz) (default http)")
    ap.add_argument("--no-soak-control", action="store_true",
                    help="skip the soak's control runs (before each worker count, as many bare aiohttp "
                         "handlers under the same load)")
    ap.add_argument("--soak-control-only", action="store_true",
                    help="of the soak phase, run only its control runs (one per --soak-workers count)")
    ap.add_argument("--scaleout-rate", type=float, help="req/s offered to the loaded worker of the scale-out "
                                                        "phase (default 800)")
    ap.add_argument("--scaleout-seconds", type=float, help="seconds per scale-out run (default 15; smoke 1)")
    ap.add_argument("--broker", metavar="HOST:PORT", help="use this Kafka broker instead of starting one")
    ap.add_argument("--flush-interval", type=float, help="the workers' flush interval in seconds "
                    "(BUCKETSTREAM_FLUSH_INTERVAL; default: theirs)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk to separate cores")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    ap.add_argument("--profile", action="store_true", help="take the py-spy profiles (default unless --smoke)")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: rewrite results.md, latency.png and README-summary.md from results.json")
    a = ap.parse_args(argv)
    cfg = Config.smoke_mode() if a.smoke else Config()
    cfg.report_only = a.report_only
    if a.out:
        cfg.out = a.out.resolve()
    for name in ("duration", "connections", "repeats", "memory_keys", "recovery_keys", "broker", "flush_interval",
                 "soak_seconds", "soak_window", "soak_fraction", "scaleout_rate", "scaleout_seconds"):
        if getattr(a, name) is not None:
            setattr(cfg, name, getattr(a, name))
    if a.soak_workers:
        cfg.soak_workers = tuple(int(x) for x in a.soak_workers.split(","))
    from bucketstream.settings import Settings

    for item in a.worker_setting:
        name, sep, value = item.partition("=")
        if not sep or name not in Settings.model_fields:
            ap.error(f"--worker-setting {item!r}: NAME=VALUE with NAME a worker setting (bucketstream/settings.py)")
        cfg.worker_settings[name] = value
    if a.soak_traffic:
        cfg.soak_traffic = tuple(x.strip() for x in a.soak_traffic.split(","))
        if unknown := set(cfg.soak_traffic) - {"unique", "skewed"}:
            ap.error(f"--soak-traffic: unknown kind(s) {', '.join(sorted(unknown))} (unique, skewed)")
    if a.soak_protocol:
        cfg.soak_protocol = tuple(x.strip() for x in a.soak_protocol.split(","))
        if unknown := set(cfg.soak_protocol) - {"http", "rls"}:
            ap.error(f"--soak-protocol: unknown surface(s) {', '.join(sorted(unknown))} (http, rls)")
    if a.fractions:
        cfg.fractions = sorted(float(x) for x in a.fractions.split(","))
    if a.phases:
        wanted = tuple(x.strip() for x in a.phases.split(",") if x.strip())
        unknown = set(wanted) - set(PHASES)
        if unknown:
            ap.error(f"unknown phases: {', '.join(sorted(unknown))}")
        cfg.phases = wanted
    if a.no_soak_control and a.soak_control_only:
        ap.error("--no-soak-control and --soak-control-only contradict each other")
    cfg.soak_control = not a.no_soak_control
    cfg.soak_control_only = a.soak_control_only
    cfg.pin = not a.no_pin
    if a.no_profile:
        cfg.profile = False
    elif a.profile:
        cfg.profile = True
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    os.chdir(ROOT)  # tests.cluster, deploy/kafka/kafka.sh and the bench package are found from here
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if cfg.report_only:
        try:
            results = json.loads((cfg.out / "results.json").read_text())
        except OSError as exc:
            print(f"bench: no results to report: {exc}", file=sys.stderr)
            return 1
        report.write(results, cfg.out)
        print(f"bench: rewrote {cfg.out / 'results.md'}")
        return 0

    signal.signal(signal.SIGTERM, stop)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retries while a new topic elects its leaders
    try:
        Bench(cfg).run()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    return 0
