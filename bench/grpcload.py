"""The gRPC load generator of the rls phase and of the soak through RLS: ghz (Go, built by ``deploy/tools/tools.sh ghz``) calling Envoy's ShouldRateLimit.

ghz needs the service's protos; it reads them from a protoset written here
from the very descriptors of the ``xds-protos`` package the worker serves
(``envoy/service/ratelimit/v3/rls.proto`` and everything it imports), so no
.proto file is kept in the repository. Each call carries one descriptor:
``[("user", U)]``, U a new user per call (``unique``: ghz's request number)
or always the same (``hot``), or the soak's skewed mix (``skewed_messages``);
domain ``bucketstream``.

ghz is a closed loop like wrk (``concurrency`` calls in flight over
``connections`` HTTP/2 connections); with ``rate`` it paces calls to that
many per second, and a run that gets more than 5 % less is *saturated*.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from bench import loadgen

ROOT = Path(__file__).resolve().parent.parent
METHOD = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def build_ghz() -> str:
    """The ghz binary (built once, from deploy/tools/ghz's pinned go.mod); BenchError-free:
    raises RuntimeError with tools.sh's message when Go is missing."""
    done = subprocess.run([str(ROOT / "deploy" / "tools" / "tools.sh"), "ghz"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["tools.sh ghz failed"])[-1])
    return done.stdout.strip().splitlines()[-1]


def write_protoset(path: Path) -> Path:
    """A FileDescriptorSet of rls.proto and its imports, from the installed generated code."""
    from envoy.service.ratelimit.v3 import rls_pb2

    files, seen = [], set()

    def add(fd) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files.append(proto)

    add(rls_pb2.DESCRIPTOR)
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    return path


@dataclass
class Run:
    scenario: str
    offered: float  # calls/s asked for (0: as fast as it goes)
    rps: float
    calls: int
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # calls that did not end OK (gRPC status), any reason
    statuses: dict
    saturated: bool

    def as_dict(self) -> dict:
        return asdict(self)


def data(scenario: str, prefix: str, domain: str = "bucketstream") -> str:
    user = f"{prefix}{{{{.RequestNumber}}}}" if scenario == "unique" else f"{prefix}hot"
    return json.dumps({"domain": domain, "descriptors": [{"entries": [{"key": "user", "value": user}]}]})


def _report(binary: str, protoset: Path, port: int, data_args: list[str], duration: float, rate: float,
            concurrency: int, connections: int, cpus: set[int] | None) -> dict:
    """One ghz run's JSON report (``details``: every call's latency and status, up to ghz's 1,000,000)."""
    cmd = [binary, "--insecure", "--protoset", str(protoset), "--call", METHOD, *data_args,
           "-c", str(concurrency), "--connections", str(connections), "-z", f"{duration}s", "-n", "0",
           "--format", "json", "--timeout", "5s", f"127.0.0.1:{port}"]
    if rate:
        cmd[-1:-1] = ["--rps", str(int(round(rate)))]
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, preexec_fn=preexec)
    if done.returncode != 0 and not done.stdout.strip():
        raise RuntimeError(f"ghz failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


#: ghz ends a timed run by closing its connections with calls in flight: those end on the
#: client (``Canceled`` or ``Unavailable`` with these messages), not answered by the server, and
#: are not counted (wrk does not count its requests in flight at the end either). The worker's
#: own ``UNAVAILABLE`` (not ready, overloaded) carries its own message and stays an error.
CUT_OFF = ("the client connection is closing", "transport is closing")


def _calls(report: dict) -> int:
    """Calls the server answered: ghz's count less those it cut off at the end."""
    cut = sum(n for message, n in (report.get("errorDistribution") or {}).items()
              if any(c in message for c in CUT_OFF))
    return int(report.get("count", 0)) - cut


def _errors(report: dict) -> int:
    """Calls the server answered with a status other than OK."""
    return _calls(report) - int((report.get("statusCodeDistribution") or {}).get("OK", 0))


def ghz(binary: str, protoset: Path, port: int, scenario: str, duration: float, prefix: str, rate: float = 0.0,
        concurrency: int = 50, connections: int = 4, cpus: set[int] | None = None) -> Run:
    report = _report(binary, protoset, port, ["-d", data(scenario, prefix)], duration, rate, concurrency,
                     connections, cpus)
    latencies = {round(float(x["percentage"])): x["latency"] / 1e6 for x in report.get("latencyDistribution") or []}
    calls = _calls(report)
    rps = float(report.get("rps", 0.0))
    return Run(scenario=scenario, offered=rate, rps=rps, calls=calls, p50_ms=latencies.get(50),
               p99_ms=latencies.get(99), errors=_errors(report),
               statuses=report.get("statusCodeDistribution") or {}, saturated=bool(rate) and rps < 0.95 * rate)


#: the skewed mix's draw, as bench.loadgen's script makes it for wrk: user floor(SPACE ** u)
SKEWED_SPACE = 1_000_000


def skewed_messages(prefix: str, calls: int, seed: int) -> list[dict]:
    """``calls`` requests of the soak's skewed mix (bench.loadgen: Zipf over SKEWED_SPACE ids, user 1
    about 5 % of them), drawn with ``seed``: ghz sends an array's messages round robin."""
    import random

    draw = random.Random(seed).random
    return [{"domain": "bucketstream",
             "descriptors": [{"entries": [{"key": "user", "value": f"{prefix}{math.floor(SKEWED_SPACE ** draw())}"}]}]}
            for _ in range(calls)]


def nearest_rank(ordered: list[int], p: float) -> int:
    """The ``p``-th percentile of sorted ``ordered`` by nearest rank: the least value at or under
    which p % of them are (0 for none)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))] if ordered else 0


def grid(latencies_us: list[int]) -> list[int]:
    """The latency at each of ``loadgen.GRID``'s percentiles, what ``loadgen.pooled_percentile``
    pools runs by."""
    ordered = sorted(latencies_us)
    return [nearest_rank(ordered, p) for p in loadgen.GRID]


def soak_run(binary: str, protoset: Path, port: int, traffic: str, duration: float, prefix: str, rate: float,
             seed: int, workdir: Path, concurrency: int = 50, connections: int = 4,
             cpus: set[int] | None = None) -> "loadgen.Run":
    """One window of the soak phase through RLS: ``traffic`` ``unique`` (a new user per call) or
    ``skewed`` (``skewed_messages``), paced at ``rate`` calls/s (0: as fast as it goes), reported
    as a ``bench.loadgen.Run`` with its grid, so that the soak pools it as it pools wrk's runs.

    ``non_2xx`` is 0: an answer over the limit is a gRPC OK carrying ``OVER_LIMIT``, which ghz
    does not read (the soak counts refusals from the workers' own counters instead)."""
    if traffic == "skewed":
        path = workdir / f"rls-soak-{port}-{seed}.json"
        # enough messages that a window does not go round its array; capped (ghz parses it whole)
        calls = min(400_000, max(1_000, int(1.1 * (rate or 5_000) * duration)))
        path.write_text(json.dumps(skewed_messages(prefix, calls, seed)))
        data_args = ["-D", str(path)]
    else:
        data_args = ["-d", data("unique", prefix)]
    return soak_result(_report(binary, protoset, port, data_args, duration, rate, concurrency, connections, cpus),
                       traffic, rate)


def soak_result(report: dict, traffic: str, rate: float) -> "loadgen.Run":
    """ghz's JSON report as a ``bench.loadgen.Run`` with its grid (``soak_run``)."""
    # µs, as wrk's grid: every call that ended OK (ghz's own percentiles leave out the others too)
    ordered = sorted(round(d["latency"] / 1e3) for d in report.get("details") or [] if not d.get("error"))

    def ms(p: float) -> float:
        return nearest_rank(ordered, p) / 1e3

    return loadgen.Run(target="rls", scenario=traffic, offered=rate, duration=report.get("total", 0) / 1e9,
                       requests=_calls(report), errors=_errors(report), non_2xx=0, p50_ms=ms(50),
                       p90_ms=ms(90), p99_ms=ms(99), p999_ms=ms(99.9), max_ms=ms(100),
                       mean_ms=sum(ordered) / len(ordered) / 1e3 if ordered else 0.0, grid=grid(ordered))


#: the issue's targets (#16): RLS on one worker vs /protected for one hot user, same run
TARGET_RATIO = 0.5
TARGET_P99_MS = 5.0


def markdown(results: dict) -> list[str]:
    """The rls phase's section of results.md (nothing when it did not run)."""
    r = results.get("rls")
    if not r:
        return []
    out = ["## Envoy's rate limit service (gRPC), one worker, beside POST /protected", ""]
    if "skipped" in r:
        return out + [f"Not run: {r['skipped']}", ""]

    def ms(x):
        return "-" if x is None else f"{x:.2f}"

    ratio = r["rls_hot"]["rps"] / r["protected_hot"]["rps"] if r["protected_hot"]["rps"] else None
    half = r["rls_half"]
    out += ["| target | measured | |", "|---|---|---|",
            f"| RLS ≥ {TARGET_RATIO}× /protected, one hot user, same worker and run | "
            f"{r['rls_hot']['rps']:,.0f} vs {r['protected_hot']['rps']:,.0f} = {ratio:.2f}× | "
            f"{'met' if ratio is not None and ratio >= TARGET_RATIO else '**missed**'} |",
            f"| RLS p99 < {TARGET_P99_MS:g} ms at half its hot-user max ({half['offered']:,.0f} calls/s offered) | "
            f"{ms(half['p99_ms'])} ms{' (saturated)' if half['saturated'] else ''} | "
            f"{'met' if half['p99_ms'] is not None and half['p99_ms'] < TARGET_P99_MS and not half['saturated'] else '**missed**'} |",
            "", "| run | offered | got /s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name, run in [("POST /protected, one hot user (wrk, median)", r["protected_hot"]),
                      ("RLS, one hot user (ghz, median)", r["rls_hot"]),
                      ("RLS, a new user per call (ghz)", r["rls_unique"]),
                      ("RLS, one hot user, half load (ghz)", half)]:
        offered = f"{run['offered']:,.0f}" if run.get("offered") else "max"
        out.append(f"| {name} | {offered} | {run['rps']:,.0f} | {ms(run['p50_ms'])} | {ms(run['p99_ms'])} | "
                   f"{run['errors']} |")
    out += ["", f"ghz {r['ghz']['concurrency']} calls in flight over {r['ghz']['connections']} HTTP/2 connections, "
            "one descriptor per call; wrk as in the other phases; both on the other core. "
            "Every answer is an admission (capacity = rate = 1,000,000).", ""]
    return out
