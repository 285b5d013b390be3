"""Envoy's rate limit service (gRPC) and the gRPC health service, through the upstream-generated stubs.

Parsing, the limit mapping and the headers are pure; then the service runs
in-process on a Worker with a fake clock and no Kafka (readiness, every bad
input, cost); then on real workers against the real broker (one user at
capacity 10, two workers sharing a bucket, health of a real worker).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.wrappers_pb2 import UInt64Value
from grpc_health.v1 import health_pb2, health_pb2_grpc
from multidict import CIMultiDict

from bucketstream import metrics, rls
from bucketstream.rules import Rules
from bucketstream.settings import Settings
from bucketstream.web import decision_response, protector
from bucketstream.worker import Worker
from tests.cluster import free_port

Response = rls_pb2.RateLimitResponse
OK, OVER_LIMIT = Response.OK, Response.OVER_LIMIT
Unit = Response.RateLimit
Entry = RateLimitDescriptor.Entry


def descriptor(hits: int | None = None, **entries: str) -> RateLimitDescriptor:
    d = RateLimitDescriptor(entries=[Entry(key=k, value=v) for k, v in entries.items()])
    if hits is not None:
        d.hits_addend.CopyFrom(UInt64Value(value=hits))
    return d


def request(*descriptors: RateLimitDescriptor, domain: str = "bucketstream", hits: int = 0) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=list(descriptors), hits_addend=hits)


def headers_of(response: Response) -> list[tuple[str, str]]:
    return [(h.key, h.value) for h in response.response_headers_to_add]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ready_worker(clock: Clock, **settings) -> Worker:
    w = Worker(Settings(**settings), clock=clock, slot=7)
    w.tables_recovered = lambda: True
    w.mark_peer_feed_ready()
    return w


# -- pure: the request's descriptors, the limit, the headers -------------------------------

def test_each_descriptor_names_a_user_a_resource_and_a_cost():
    req = request(descriptor(user="alice"), descriptor(user="bob", resource="search", path="/x"),
                  descriptor(hits=3, user="carol"), descriptor(hits=0, user="dave"), hits=2)
    assert rls.parse(req, "bucketstream", "user") == [
        ("alice", None, 2), ("bob", "search", 2), ("carol", None, 3), ("dave", None, 1)]
    assert rls.parse(request(descriptor(user="a")), "bucketstream", "user") == [("a", None, 1)]  # 0 means 1
    assert rls.parse(request(descriptor(client="a")), "bucketstream", "client") == [("a", None, 1)]


def test_another_domain_is_not_parsed():
    assert rls.parse(request(descriptor(nothing="x"), domain="other"), "bucketstream", "user") is None


@pytest.mark.parametrize("req, problem", [
    (request(), "the request has no descriptors"),
    (request(domain="other"), "the request has no descriptors"),
    (request(descriptor(user="a"), domain=""), "the request has no domain"),
    (request(descriptor(user="a"), descriptor(resource="search")), "descriptor 1: no 'user' entry"),
    (request(descriptor()), "descriptor 0: no 'user' entry"),
    (request(RateLimitDescriptor(
        entries=[Entry(key="user", value="a"), Entry(key="user", value="b")])), "entry 'user' given more than once"),
    (request(RateLimitDescriptor(
        entries=[Entry(key="user", value="a"), Entry(key="resource", value="s"), Entry(key="resource", value="t")])),
     "entry 'resource' given more than once"),
    (request(descriptor(user="")), "descriptor 0: entry 'user' is empty"),
    (request(descriptor(user="x" * 257)), "descriptor 0: entry 'user' is longer than 256 bytes"),
    (request(descriptor(user="a\tb")), "descriptor 0: entry 'user' contains control characters"),
    (request(descriptor(user="a", resource="no/slash")), "descriptor 0: entry 'resource': resource name must be"),
    (request(descriptor(user="a", resource="")), "descriptor 0: entry 'resource': resource name must be"),
])
def test_bad_descriptors_are_named(req, problem):
    with pytest.raises(rls.InvalidArgument, match=problem.replace("(", r"\(")):
        rls.parse(req, "bucketstream", "user")


@pytest.mark.parametrize("rate, unit, n", [
    (1, Unit.SECOND, 1), (1_000_000, Unit.SECOND, 1_000_000), (2.5, Unit.MINUTE, 150), (0.5, Unit.MINUTE, 30),
    (0.3, Unit.MINUTE, 18), (0.01, Unit.HOUR, 36), (1 / 7, Unit.DAY, 12343), (1e-6, Unit.DAY, 1),
])
def test_the_limit_is_the_refill_rate_in_the_shortest_whole_unit(rate, unit, n):
    from bucketstream.rules import Policy
    limit = rls.current_limit(Policy.build("p", 10, rate))
    assert (limit.name, limit.unit, limit.requests_per_unit) == ("p", unit, n)


def test_the_headers_are_those_of_protected_for_the_same_decision():
    """Same worker, same clock, same bucket state: /protected's headers and RLS's agree."""
    clock = Clock()
    w = ready_worker(clock, capacity=3, rate=0.5)
    protect = protector(w)

    class Req:
        headers = CIMultiDict([("X-User-ID", "u")])

    service = rls.RateLimitService(ready_worker(clock, capacity=3, rate=0.5))
    for _ in range(5):  # 3 allowed, then refused
        http = protect(Req(), None)
        grpc_answer = service.answer(request(descriptor(user="u")))
        expected = [(k, http.headers[k]) for k in ("RateLimit-Policy", "RateLimit", "Retry-After") if k in http.headers]
        assert headers_of(grpc_answer) == expected
        clock.now += 0.3
    assert decision_response  # the function both follow


# -- in-process: the service on a Worker with a fake clock, no Kafka -----------------------

def serve(worker: Worker, calls, address: str | None = None):
    """Start the gRPC server for ``worker`` (on a free port), run ``calls(channel)``, stop it."""
    address = address or f"127.0.0.1:{free_port()}"

    async def main():
        server, health = rls.build_server(worker, address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                return await calls(channel)
        finally:
            await server.stop(None)
    return asyncio.run(main())


async def should(channel, req) -> Response:
    return await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(req, timeout=5)


async def refused(channel, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await should(channel, req)
    return info.value.code(), info.value.details()


def not_decided(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("bucketstream_rls_not_decided_total", {"reason": reason}) or 0.0


def test_unavailable_and_not_serving_until_ready_and_while_stopping():
    clock = Clock()
    w = Worker(Settings(), clock=clock, slot=3)

    async def calls(channel):
        check = health_pb2_grpc.HealthStub(channel).Check
        statuses = []

        async def look():
            for service in ("", rls.SERVICE):
                statuses.append((await check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status)
            code, details = await refused(channel, request(descriptor(user="u"))) if not w.ready() else (None, None)
            return code, details

        before = not_decided("unavailable")
        first = await look()
        w.tables_recovered = lambda: True
        w.mark_peer_feed_ready()
        answer = await should(channel, request(descriptor(user="u")))
        await look()
        w.mark_stopping()
        last = await look()
        return first, answer, last, statuses, not_decided("unavailable") - before

    first, answer, last, statuses, unavailable = serve(w, calls)
    S, N = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert first == (grpc.StatusCode.UNAVAILABLE, "tables are recovering; try again shortly")
    assert answer.overall_code == OK
    assert last == (grpc.StatusCode.UNAVAILABLE, "this worker is stopping; try another one")
    assert statuses == [N, N, S, S, N, N]
    assert unavailable == 2


def test_twelve_calls_at_capacity_ten_give_ten_ok_then_over_limit_with_honest_headers():
    clock = Clock()
    w = ready_worker(clock, capacity=10, rate=1)

    async def calls(channel):
        return [await should(channel, request(descriptor(user="alice"))) for _ in range(12)]

    answers = serve(w, calls)
    assert [a.overall_code for a in answers] == [OK] * 10 + [OVER_LIMIT] * 2
    for i, a in enumerate(answers[:10]):
        (status,) = a.statuses
        assert (status.code, status.limit_remaining, status.duration_until_reset.seconds) == (OK, 9 - i, i + 1)
        assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (1, Unit.SECOND)
        assert headers_of(a) == [("RateLimit-Policy", '"default";q=10;w=10'), ("RateLimit", f'"default";r={9 - i};t={i + 1}')]
    for a in answers[10:]:
        (status,) = a.statuses
        assert (status.code, status.limit_remaining, status.duration_until_reset.seconds) == (OVER_LIMIT, 0, 10)
        assert headers_of(a) == [("RateLimit-Policy", '"default";q=10;w=10'), ("RateLimit", '"default";r=0;t=10'),
                                 ("Retry-After", "1")]


def test_descriptors_are_charged_independently_as_envoy_does():
    """One descriptor over its limit does not undo the others' charges; Retry-After is the
    longest wait among the refused; a shadow rule's refusal is OK."""
    clock = Clock()
    limits = {"capacity": 2, "rate": 0.5}
    w = ready_worker(clock, **limits)

    async def calls(channel):
        first = await should(channel, request(descriptor(user="a"), descriptor(user="b", hits=2)))
        second = await should(channel, request(descriptor(user="a"), descriptor(user="b")))
        return first, second

    first, second = serve(w, calls)
    assert first.overall_code == OK and [s.limit_remaining for s in first.statuses] == [1, 0]
    assert second.overall_code == OVER_LIMIT
    assert [s.code for s in second.statuses] == [OK, OVER_LIMIT]  # a was charged although b was over
    assert [s.limit_remaining for s in second.statuses] == [0, 0]
    assert headers_of(second)[-1] == ("Retry-After", "2")  # b needs 2 s for one token at 0.5/s
    assert sum(1 for k, _ in headers_of(second) if k == "RateLimit") == 2


def test_a_cost_above_capacity_is_over_limit_forever_with_no_retry_after():
    clock = Clock()
    w = ready_worker(clock, capacity=10, rate=1)

    async def calls(channel):
        return await should(channel, request(descriptor(user="a", hits=11))), \
            await should(channel, request(descriptor(user="a", hits=2**64 - 1))), \
            await should(channel, request(descriptor(user="a"), hits=10))

    big, huge, exact = serve(w, calls)
    assert big.overall_code == OVER_LIMIT and big.statuses[0].limit_remaining == 10
    assert huge.overall_code == OVER_LIMIT and huge.statuses[0].limit_remaining == 10
    assert all(k != "Retry-After" for k, _ in headers_of(big))
    assert exact.overall_code == OK and exact.statuses[0].limit_remaining == 0


def test_every_bad_input_is_invalid_argument_and_charges_nothing(tmp_path):
    limits = tmp_path / "limits.toml"
    limits.write_text('strict_resources = true\n[default]\ncapacity = 5\nrate = 1\n[resources.search]\ncapacity = 2\nrate = 1\n')
    clock = Clock()
    w = ready_worker(clock, limits=limits)
    good = descriptor(user="a")
    bad = [
        (request(), "the request has no descriptors"),
        (request(good, domain=""), "the request has no domain"),
        (request(good, descriptor(resource="search")), "descriptor 1: no 'user' entry (it names the user)"),
        (request(good, descriptor(user="")), "descriptor 1: entry 'user' is empty"),
        (request(good, descriptor(user="a\x7f")), "descriptor 1: entry 'user' contains control characters"),
        (request(good, descriptor(user="a", resource="a b")),
         "descriptor 1: entry 'resource': resource name must be 1-64 characters of A-Z a-z 0-9 . _ ~ -"),
        (request(good, descriptor(user="a", resource="export")), "descriptor 1: no rule for resource 'export'"),
    ]

    async def calls(channel):
        out = [await refused(channel, req) for req, _ in bad]
        after = await should(channel, request(good))
        return out, after

    before = not_decided("invalid_argument")
    out, after = serve(w, calls)
    assert out == [(grpc.StatusCode.INVALID_ARGUMENT, problem) for _, problem in bad]
    assert not_decided("invalid_argument") - before == len(bad)
    assert after.statuses[0].limit_remaining == 4  # nothing was charged before


def test_another_domain_is_ok_with_no_limit_and_counted():
    clock = Clock()
    w = ready_worker(clock, capacity=1, rate=1, rls_domain="edge")

    async def calls(channel):
        return [await should(channel, request(descriptor(user="a"), descriptor(x="y"), domain="bucketstream"))
                for _ in range(3)]

    before = not_decided("unknown_domain")
    answers = serve(w, calls)
    assert all(a.overall_code == OK and [s.code for s in a.statuses] == [OK, OK] for a in answers)
    assert all(not s.HasField("current_limit") for a in answers for s in a.statuses)
    assert not_decided("unknown_domain") - before == 3
    assert w.limiter.own_keys == 0  # nothing charged


def test_shadow_refusals_are_ok_and_labelled_by_protocol(tmp_path):
    limits = tmp_path / "limits.toml"
    limits.write_text('[default]\ncapacity = 5\nrate = 1\n[resources.upload]\ncapacity = 1\nrate = 0.01\nshadow = true\n')
    clock = Clock()
    w = ready_worker(clock, limits=limits)

    async def calls(channel):
        return [await should(channel, request(descriptor(user="s", resource="upload"))) for _ in range(3)]

    def count(outcome):
        return metrics.REGISTRY.get_sample_value(
            "bucketstream_decisions_total", {"policy": "upload", "outcome": outcome, "protocol": "rls"}) or 0.0

    before = count("shadow_refused"), count("allowed")
    answers = serve(w, calls)
    assert [a.overall_code for a in answers] == [OK, OK, OK]
    assert (count("shadow_refused") - before[0], count("allowed") - before[1]) == (2, 1)
    assert all(k != "Retry-After" for a in answers for k, _ in headers_of(a))


# -- real workers on the real broker --------------------------------------------------------

def rls_call(port: int, req, timeout: float = 5.0) -> Response:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(req, timeout=timeout)


def start_with_grpc(pool, **settings):
    port = free_port()
    (w,) = pool.start(1, grpc_port=port, **settings)
    w.grpc_port = port
    return w


@pytest.mark.broker
def test_a_real_worker_gives_ten_ok_then_over_limit_and_is_serving(pool):
    w = start_with_grpc(pool, capacity=10, rate=0.01)
    with grpc.insecure_channel(f"127.0.0.1:{w.grpc_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(service=rls.SERVICE), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    answers = [rls_call(w.grpc_port, request(descriptor(user="alice"))) for _ in range(12)]
    assert [a.overall_code for a in answers] == [OK] * 10 + [OVER_LIMIT] * 2
    assert [a.statuses[0].limit_remaining for a in answers] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0]
    last = dict(headers_of(answers[-1]))
    assert last["RateLimit-Policy"] == '"default";q=10;w=1000'
    assert last["RateLimit"].startswith('"default";r=0;t=')
    assert 99 <= int(last["Retry-After"]) <= 100  # 0.01 tokens/s: one token in 100 s
    # the same bucket as POST /protected
    status, headers, _ = w.protected("alice")
    assert status == 429 and headers["RateLimit"].startswith('"default";r=0;')
    _, _, body = w.request("GET", "/metrics")
    text = body.decode()
    assert 'bucketstream_decisions_total{outcome="allowed",policy="default",protocol="rls"} 10.0' in text
    assert 'bucketstream_decisions_total{outcome="refused",policy="default",protocol="rls"} 2.0' in text
    assert 'bucketstream_decisions_total{outcome="refused",policy="default",protocol="http"} 1.0' in text


@pytest.mark.broker
def test_two_workers_share_the_bucket(pool):
    a = start_with_grpc(pool, capacity=10, rate=0.01)
    b = start_with_grpc(pool, capacity=10, rate=0.01)
    for _ in range(6):
        assert rls_call(a.grpc_port, request(descriptor(user="shared"))).overall_code == OK

    # b sees a's spending once it is replicated (milliseconds): wait for its view, not a clock
    from tests.cluster import wait_until
    wait_until(lambda: b.bucket("shared")["consumed"] == 6, 10, what="b sees a's 6 tokens")
    answers = [rls_call(b.grpc_port, request(descriptor(user="shared"))) for _ in range(5)]
    assert [x.overall_code for x in answers] == [OK] * 4 + [OVER_LIMIT]
    assert [x.statuses[0].limit_remaining for x in answers] == [3, 2, 1, 0, 0]


def test_the_documented_python_example_prints_what_it_says(capsys):
    """docs/api.md's snippet, run as written against a worker at capacity 10, rate 1."""
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    block = doc.split("From Python, with the upstream stubs", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code, expected = block.rsplit("# ", 1)
    clock = Clock()
    w = ready_worker(clock, capacity=10, rate=1)

    address = f"127.0.0.1:{free_port()}"

    async def calls(channel):
        await asyncio.get_running_loop().run_in_executor(None, exec, code.replace("127.0.0.1:7066", address), {})

    serve(w, calls, address)
    assert capsys.readouterr().out.strip() == expected.strip()


@pytest.mark.parametrize("overrides, problem", [
    ({"grpc_port": 70000}, "BUCKETSTREAM_GRPC_PORT: Input should be less than or equal to 65535"),
    ({"grpc_port": 6066, "web_port": 6066}, "BUCKETSTREAM_GRPC_PORT must differ from BUCKETSTREAM_WEB_PORT"),
    ({"rls_domain": ""}, "BUCKETSTREAM_RLS_DOMAIN: String should match pattern"),
    ({"rls_user_key": "resource"}, "BUCKETSTREAM_RLS_USER_KEY cannot be 'resource'"),
])
def test_bad_rls_settings_are_named(overrides, problem):
    from bucketstream.settings import ConfigError, load
    with pytest.raises(ConfigError, match=problem):
        load(overrides)


def test_a_rule_with_two_limits_is_decided_all_or_nothing_and_names_the_limit_that_refused(tmp_path):
    """As /protected: 3 per second and 5 per 100 s; the second limit refuses the sixth call
    although the first has tokens again, and neither limit is charged by a refused call."""
    limits = tmp_path / "limits.toml"
    limits.write_text('[default]\nlimits = [{ name = "second", capacity = 3, rate = 3 }, '
                      '{ name = "long", capacity = 5, rate = 0.05 }]\n')
    clock = Clock()
    w = ready_worker(clock, limits=limits)

    async def calls(channel):
        out = []
        for i in range(7):
            out.append(await should(channel, request(descriptor(user="alice"))))
            clock.now += 0.4  # the per-second limit refills more than one token meanwhile
        return out

    answers = serve(w, calls)
    assert [a.overall_code for a in answers] == [OK] * 5 + [OVER_LIMIT] * 2
    refused = answers[5]
    (status,) = refused.statuses
    # the long limit's: 5 spent less 2 s of refill at 0.05/s, 98 s until full
    assert status.limit_remaining == 0 and status.duration_until_reset.seconds == 98
    policies = [v for k, v in headers_of(refused) if k == "RateLimit-Policy"]
    assert policies == ['"default:second";q=3;w=1', '"default:long";q=5;w=100']
    view = w.limiter.view(Rules.key(w.rules.policy("alice", None), "alice", None))
    assert view.consumed == 5  # the refused calls charged the per-second limit nothing either
