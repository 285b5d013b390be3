"""Probe for #16: which gRPC server stack could serve ShouldRateLimit cheaply enough in the worker's loop.

``python -m bench.rlsprobe --duration 5 --rounds 5 --grpclib-worker --paced 500``
starts, each pinned to CPU 0 (ghz, wrk and the Kafka broker on CPU 1), a
fixed-answer server per stack (every call answered ``OK`` with one ``OK``
status, the same message for every stack, xds-protos' generated classes) and
a real bucketstream worker (``--grpc-port``), then runs the same load against
each in turn, round after round, the order reversed every other round (the
machine's other jobs hit all of them alike):

* ``aiohttp``: the ceiling's fixed-answer ``POST /protected`` (bench.servers), wrk: the reference;
* ``grpcaio``: grpcio's ``grpc.aio`` server (what bucketstream/rls.py uses);
* ``grpclib``: grpclib (pure-Python gRPC on h2) on the default asyncio loop;
* ``grpclib-uvloop``: the same on uvloop;
* ``grpcsync-hop``: grpcio's sync server (thread pool), the answer made on an asyncio
  loop in the main thread through ``run_coroutine_threadsafe`` (a hop per call);
* ``grpcaio-answer``, ``grpclib-answer``: grpc.aio and grpclib answering with bucketstream's
  own ``RateLimitService.answer`` (parse, decide, response) on a Worker without Kafka or Faust;
* ``worker-http``: the worker's ``POST /protected``, one hot user (wrk);
* ``worker-rls``: the worker's ``ShouldRateLimit`` (grpc.aio), one hot user (ghz);
* with ``--grpclib-worker``, ``worker2-http`` and ``worker2-rls-grpclib``: a second worker
  whose ShouldRateLimit goes through grpclib instead (``register_grpclib``, put in place by
  a ``sitecustomize`` on that worker's PYTHONPATH: an experiment, not a port).

gRPC load: ghz (``deploy/tools/tools.sh ghz``), 50 calls in flight over 4
HTTP/2 connections, one descriptor (the hot user) per call; HTTP load: wrk,
50 connections (bench.loadgen). For each run: calls/s and the server
process's CPU time per call (utime + stime of all its threads,
/proc/<pid>/stat): on this shared machine the CPU per call is the number to
read, calls/s moves with the other jobs. The "N errors" logged after a gRPC
run are, at up to 50, the calls still in flight when ghz's time ran out
(``Unavailable``), not failures of the server. ``--paced R`` then runs every gRPC
server (or ``--paced-stacks``) at R calls/s, as many rounds, for p50/p99.
Results in ``--out`` (rlsprobe.md, rlsprobe.json).

grpclib and uvloop are not dependencies of bucketstream (the probe found no
reason to make them one): ``.venv/bin/pip install grpclib==0.4.9 uvloop==0.23.0``
first. ``python -m bench.rlsprobe serve STACK --port P`` runs one fixed-answer server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRPC_STACKS = ("grpcaio", "grpclib", "grpclib-uvloop", "grpcsync-hop", "grpcaio-answer", "grpclib-answer")


def fixed_response():
    from envoy.service.ratelimit.v3 import rls_pb2

    R = rls_pb2.RateLimitResponse
    return R(overall_code=R.OK, statuses=[R.DescriptorStatus(code=R.OK, limit_remaining=9)])


def real_answer():
    """bucketstream's own ``RateLimitService.answer`` on a ready Worker without Kafka (as
    tests/test_rls.py runs it): parse, decide, build the response; no Faust around it."""
    from bucketstream.rls import RateLimitService
    from bucketstream.settings import Settings
    from bucketstream.worker import Worker

    w = Worker(Settings(capacity=1_000_000.0, rate=1_000_000.0))
    w.tables_recovered = lambda: True
    w.mark_peer_feed_ready()
    return RateLimitService(w).answer


async def serve_grpcaio(port: int, decide: bool = False) -> None:
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2_grpc

    fixed = fixed_response()
    answer = real_answer() if decide else (lambda request: fixed)

    class Servicer(rls_pb2_grpc.RateLimitServiceServicer):
        async def ShouldRateLimit(self, request, context):
            return answer(request)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_grpclib(port: int, decide: bool = False) -> None:
    from envoy.service.ratelimit.v3 import rls_pb2
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    fixed = fixed_response()
    answer = real_answer() if decide else (lambda request: fixed)

    class Service:
        async def should_rate_limit(self, stream) -> None:
            await stream.send_message(answer(await stream.recv_message()))

        def __mapping__(self):
            return {"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit":
                    Handler(self.should_rate_limit, Cardinality.UNARY_UNARY,
                            rls_pb2.RateLimitRequest, rls_pb2.RateLimitResponse)}

    server = Server([Service()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


async def serve_grpcsync_hop(port: int) -> None:
    """grpcio's sync server (its own threads); each call's answer made on the asyncio loop
    (``run_coroutine_threadsafe``), as the worker's decision would have to be."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2_grpc

    answer = fixed_response()
    loop = asyncio.get_running_loop()

    async def decide(request):
        return answer

    class Servicer(rls_pb2_grpc.RateLimitServiceServicer):
        def ShouldRateLimit(self, request, context):
            return asyncio.run_coroutine_threadsafe(decide(request), loop).result()

    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)])
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    await asyncio.Event().wait()


def register_grpclib(app, worker) -> None:
    """The experiment of ``--grpclib-worker``: bucketstream.rls.register with grpclib in place of
    grpc.aio, the same ``RateLimitService.answer`` and the same status codes; no health service.
    Not a port: a measurement of what grpclib would cost in a real worker."""
    from envoy.service.ratelimit.v3 import rls_pb2
    from grpclib.const import Cardinality, Handler, Status
    from grpclib.exceptions import GRPCError
    from grpclib.server import Server
    from mode import Service as ModeService

    from bucketstream import metrics, rls

    settings = worker.settings
    if not settings.grpc_port:
        return
    service = rls.RateLimitService(worker)

    class LibService:
        async def should(self, stream) -> None:
            request = await stream.recv_message()
            try:
                response = service.answer(request)
            except rls.InvalidArgument as exc:
                metrics.RLS_NOT_DECIDED.labels("invalid_argument").inc()
                raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
            except rls.Unavailable as exc:
                metrics.RLS_NOT_DECIDED.labels("unavailable").inc()
                raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
            await stream.send_message(response)

        def __mapping__(self):
            return {f"/{rls.SERVICE}/ShouldRateLimit": Handler(self.should, Cardinality.UNARY_UNARY,
                                                               rls_pb2.RateLimitRequest, rls_pb2.RateLimitResponse)}

    @app.service
    class GrpclibServer(ModeService):
        server = None

        async def on_start(self) -> None:
            self.server = Server([LibService()])
            await self.server.start(settings.web_host, settings.grpc_port)

        async def on_stop(self) -> None:
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()


def serve(stack: str, port: int) -> None:
    if stack == "grpcaio":
        asyncio.run(serve_grpcaio(port))
    elif stack == "grpclib":
        asyncio.run(serve_grpclib(port))
    elif stack == "grpclib-uvloop":
        import uvloop

        uvloop.run(serve_grpclib(port))
    elif stack == "grpcaio-answer":
        asyncio.run(serve_grpcaio(port, decide=True))
    elif stack == "grpclib-answer":
        asyncio.run(serve_grpclib(port, decide=True))
    elif stack == "grpcsync-hop":
        asyncio.run(serve_grpcsync_hop(port))
    else:
        raise SystemExit(f"unknown stack {stack}")


def probe(args) -> int:
    sys.path.insert(0, str(ROOT))
    from bench import grpcload, loadgen
    from bench.run import Bench, Config, log
    from bench.tools import cpu_seconds, pin, python, wait_http
    from tests.cluster import free_port

    cfg = Config(out=Path(args.out), duration=args.duration, warmup=2.0, repeats=1, pin=True)
    b = Bench(cfg)
    b.raw.mkdir(parents=True, exist_ok=True)
    binary = grpcload.build_ghz()
    protoset = grpcload.write_protoset(b.work / "rls.protoset")
    rows: dict[str, list[tuple[float, float]]] = {}
    paced: dict[str, list[tuple[float, float, float]]] = {}
    try:
        servers = {}  # name -> (pid, port, kind)
        for stack in args.stacks:
            port = free_port()
            if stack == "aiohttp":
                proc = b.procs.start(stack, [python(), "-m", "bench.servers", "ceiling", "--port", str(port)],
                                     b.raw / f"{stack}.log", cpus=b.server_cpus)
                wait_http(port, "/healthz", proc=proc)
                servers[stack] = (proc.pid, port, "http")
            else:
                proc = b.procs.start(stack, [python(), "-m", "bench.rlsprobe", "serve", stack, "--port", str(port)],
                                     b.raw / f"{stack}.log", cpus=b.server_cpus)
                servers[stack] = (proc.pid, port, "grpc")
        if args.worker:
            b.start_broker()
            grpc_port = free_port()
            p = b.pool("probe", grpc_port=grpc_port)
            (w,) = p.start(1)
            pin(w.proc.pid, b.server_cpus)
            servers["worker-http"] = (w.proc.pid, w.port, "http")
            servers["worker-rls"] = (w.proc.pid, grpc_port, "grpc")
            if args.grpclib_worker:
                # a second worker whose ShouldRateLimit goes through grpclib (register_grpclib,
                # put in place by the sitecustomize written here; nothing in bucketstream/ changes)
                hook = b.work / "grpclib-hook"
                hook.mkdir()
                (hook / "sitecustomize.py").write_text(
                    "import bucketstream.rls, bench.rlsprobe\n"
                    "bucketstream.rls.register = bench.rlsprobe.register_grpclib\n")
                grpc_port2 = free_port()
                p2 = b.pool("probe2", grpc_port=grpc_port2)
                os.environ["PYTHONPATH"] = os.pathsep.join([str(hook), str(ROOT)] + (
                    [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
                try:
                    (w2,) = p2.start(1)
                finally:
                    os.environ.pop("PYTHONPATH")
                pin(w2.proc.pid, b.server_cpus)
                servers["worker2-http"] = (w2.proc.pid, w2.port, "http")
                servers["worker2-rls-grpclib"] = (w2.proc.pid, grpc_port2, "grpc")
        time.sleep(2.0)

        def once(name: str, duration: float) -> tuple[float, float]:
            pid, port, kind = servers[name]
            c0 = cpu_seconds(pid)
            if kind == "http":
                run = loadgen.wrk(port, target=name, scenario="hot", duration=duration, workdir=b.work,
                                  connections=50, prefix=b.prefix("h"), cpus=b.gen_cpus)
                rps, calls, errors = run.rps, run.requests, run.errors
            else:
                run = grpcload.ghz(binary, protoset, port, "hot", duration, b.prefix("g"), concurrency=50,
                                   connections=4, cpus=b.gen_cpus)
                rps, calls, errors = run.rps, run.calls, run.errors
            cpu = cpu_seconds(pid) - c0
            if errors:
                log(f"  {name}: {errors} errors")
            return rps, cpu / max(1, calls) * 1e6

        for name in servers:  # warm-up
            once(name, 2.0)
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                rps, us = once(name, args.duration)
                rows.setdefault(name, []).append((rps, us))
                log(f"  round {r + 1} {name:15s} {rps:8,.0f} calls/s  {us:6.0f} us CPU/call")
        for r in range(args.rounds if args.paced else 0):
            names = [n for n in servers if servers[n][2] == "grpc" and (not args.paced_stacks or n in args.paced_stacks)]
            for name in names if r % 2 == 0 else reversed(names):
                pid, port, _ = servers[name]
                run = grpcload.ghz(binary, protoset, port, "hot", args.duration, b.prefix("p"), rate=args.paced,
                                   concurrency=50, connections=4, cpus=b.gen_cpus)
                paced.setdefault(name, []).append((run.rps, run.p50_ms, run.p99_ms))
                log(f"  paced {args.paced:,.0f}/s round {r + 1} {name:15s} got {run.rps:8,.0f} calls/s  "
                    f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms")
    finally:
        b.cleanup()
    ref = statistics.median(x[0] for x in rows.get("aiohttp", [(0, 0)])) or None
    wref = statistics.median(x[0] for x in rows.get("worker-http", [(0, 0)])) or None
    out = ["| server (pinned to one core) | calls/s (median; runs) | CPU µs per call (median; runs) | "
           "÷ aiohttp fixed | ÷ worker /protected |", "|---|---:|---:|---:|---:|"]
    for name, xs in rows.items():
        rps = statistics.median(x[0] for x in xs)
        us = statistics.median(x[1] for x in xs)
        out.append(f"| {name} | {rps:,.0f} ({', '.join(f'{x[0]:,.0f}' for x in xs)}) | {us:,.0f} "
                   f"({', '.join(f'{x[1]:,.0f}' for x in xs)}) | {rps / ref if ref else 0:.2f}× | "
                   f"{rps / wref if wref else 0:.2f}× |")
    if paced:
        out += ["", f"ghz paced at {args.paced:,.0f} calls/s (same load, 50 in flight, 4 connections):", "",
                "| server | got calls/s (median) | p50 ms (median; runs) | p99 ms (median; runs) |",
                "|---|---:|---:|---:|"]
        for name, xs in paced.items():
            out.append(f"| {name} | {statistics.median(x[0] for x in xs):,.0f} | "
                       f"{statistics.median(x[1] for x in xs):.2f} ({', '.join(f'{x[1]:.2f}' for x in xs)}) | "
                       f"{statistics.median(x[2] for x in xs):.2f} ({', '.join(f'{x[2]:.2f}' for x in xs)}) |")
    print("\n".join(out))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "rlsprobe.json").write_text(json.dumps({"max": rows, "paced": paced}, indent=1))
    (Path(args.out) / "rlsprobe.md").write_text("\n".join(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rlsprobe", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("stack", choices=GRPC_STACKS)
    s.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stacks", default="aiohttp," + ",".join(GRPC_STACKS))
    ap.add_argument("--paced", type=float, default=0.0,
                    help="then as many rounds at this many calls/s against the gRPC servers: p50, p99")
    ap.add_argument("--paced-stacks", default="", help="comma-separated subset of the servers for --paced")
    ap.add_argument("--no-worker", dest="worker", action="store_false", help="skip the real worker")
    ap.add_argument("--out", default="/tmp/rlsprobe")
    ap.add_argument("--grpclib-worker", action="store_true",
                    help="also a second worker serving ShouldRateLimit through grpclib (register_grpclib)")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.stack, args.port)
        return 0
    args.stacks = [x for x in args.stacks.split(",") if x]
    args.paced_stacks = [x for x in args.paced_stacks.split(",") if x]
    return probe(args)


if __name__ == "__main__":
    sys.exit(main())
