"""Envoy's Rate Limit Service v3 (gRPC ``ShouldRateLimit``) and the standard gRPC health service of one Worker, on its event loop.

Any Envoy (Istio, Contour, Envoy Gateway ...) can ask a worker "may this
request pass?" with the messages generated from envoyproxy/data-plane-api
(the ``xds-protos`` package): no hand-written copy of Envoy's protos. The
decision is the one ``POST /protected`` makes: the same local limiter, rules,
shadow mode and metrics (``bucketstream_decisions{protocol="rls"}``).

The mapping (the README's "Envoy" section shows it in use):

* ``domain`` must be ``BUCKETSTREAM_RLS_DOMAIN``. Another domain is answered
  as Envoy's own ratelimit service answers a domain it has no configuration
  for: ``OK``, one ``OK`` status per descriptor with no limit, nothing
  charged; counted in ``bucketstream_rls_not_decided{reason="unknown_domain"}``.
* Each descriptor is one decision, charged on its own (Envoy's ratelimit does
  the same: one descriptor over its limit does not undo what the others
  spent). Its entry ``BUCKETSTREAM_RLS_USER_KEY`` (``user``) names the user,
  an entry ``resource`` the resource; other entries are ignored. The rule is
  chosen as for ``/protected/{resource}``.
* The cost is the descriptor's ``hits_addend`` when set, else the request's;
  0 means 1. A cost above the bucket's capacity can never be admitted: it is
  answered ``OVER_LIMIT`` (as ``/protected`` answers such a request 429), with
  no ``Retry-After``: it is not a bad argument, and an error would let Envoy's
  default failure mode (allow) pass it.
* ``overall_code`` is ``OVER_LIMIT`` when any descriptor is over (a shadow
  rule's refusal is ``OK``, counted ``shadow_refused``). Each status carries
  ``limit_remaining`` (whole tokens left), ``duration_until_reset`` (seconds
  until the bucket is full again: the ``t`` of the ``RateLimit`` header) and
  ``current_limit``, the token bucket's long-run rate as a fixed window (see
  ``current_limit``): the burst it allows, its capacity, is in the headers.
  ``response_headers_to_add`` carries ``RateLimit-Policy`` and ``RateLimit``
  per descriptor, as ``web.decision_response`` writes them, and
  ``Retry-After`` (the longest wait among the refused descriptors).
* Every descriptor is checked before any is charged: no domain, no descriptors, a
  descriptor without a user entry, an entry given twice, a bad user or
  resource name (``validate``), a resource the limits file has no rule for:
  ``INVALID_ARGUMENT`` naming the descriptor and the problem, nothing charged.
  A worker that is not ready, is stopping, or holds too many admissions Kafka
  has not confirmed answers ``UNAVAILABLE`` (Envoy then applies its failure
  mode).

The health service (``grpc.health.v1.Health``) answers ``SERVING`` for ``""``
and for the rate limit service only while the worker is ready.
"""

from __future__ import annotations

import logging
import math
import time
from typing import NamedTuple

import faust
import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mode import Service

from bucketstream import metrics
from bucketstream.rules import Policy, Rules, UnknownResource
from bucketstream.validate import BadRequest, check_key, check_resource
from bucketstream.worker import Worker

log = logging.getLogger(__name__)

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
RESOURCE_KEY = "resource"

Response = rls_pb2.RateLimitResponse
OK, OVER_LIMIT = Response.OK, Response.OVER_LIMIT
_Unit = Response.RateLimit
#: the fixed windows Envoy knows, shortest first (MONTH and YEAR have no fixed length)
_UNITS = ((_Unit.SECOND, 1), (_Unit.MINUTE, 60), (_Unit.HOUR, 3600), (_Unit.DAY, 86400))
_UINT32_MAX = 2**32 - 1


class InvalidArgument(ValueError):
    """A request this service refuses with INVALID_ARGUMENT; the message is shown to the caller."""


class Unavailable(RuntimeError):
    """The worker cannot decide now (not ready, stopping, overloaded): gRPC UNAVAILABLE."""


def current_limit(policy: Policy) -> Response.RateLimit:
    """The token bucket as Envoy's fixed-window ``RateLimit``: its refill rate, in the shortest
    unit in which that rate is a whole number of requests (1/s; 0.5/s is 30 per MINUTE; 0.3/s
    18 per MINUTE), else per DAY, rounded. An approximation: it states what the bucket admits in
    the long run, not its burst (the capacity, in the ``RateLimit-Policy`` header's ``q``)."""
    rate = policy.rule.rate
    for unit, seconds in _UNITS:
        n = rate * seconds
        if n >= 1 and abs(n - round(n)) <= 1e-9 * n:
            break
    else:
        unit, n = _Unit.DAY, rate * 86400
    return Response.RateLimit(name=policy.name, unit=unit, requests_per_unit=min(_UINT32_MAX, max(1, round(n))))


def parse(request: rls_pb2.RateLimitRequest, domain: str, user_key: str) -> list[tuple[str, str | None, int]] | None:
    """(user, resource, cost) for each descriptor of ``request``; None for another domain;
    InvalidArgument naming the first descriptor and entry that is wrong."""
    descriptors = request.descriptors
    if not request.domain:  # Envoy's ratelimit refuses both with an error too
        raise InvalidArgument("the request has no domain")
    if not descriptors:
        raise InvalidArgument("the request has no descriptors")
    if request.domain != domain:
        return None
    default_cost = request.hits_addend or 1
    out = []
    for i, descriptor in enumerate(descriptors):
        user = resource = None
        for entry in descriptor.entries:
            key = entry.key
            if key == user_key:
                if user is not None:
                    raise InvalidArgument(f"descriptor {i}: entry {user_key!r} given more than once")
                user = entry.value
            elif key == RESOURCE_KEY:
                if resource is not None:
                    raise InvalidArgument(f"descriptor {i}: entry {RESOURCE_KEY!r} given more than once")
                resource = entry.value
        if user is None:
            raise InvalidArgument(f"descriptor {i}: no {user_key!r} entry (it names the user)")
        try:
            user = check_key(user, f"descriptor {i}: entry {user_key!r}")
            if resource is not None:
                try:
                    resource = check_resource(resource)
                except BadRequest as exc:
                    raise BadRequest(f"descriptor {i}: entry {RESOURCE_KEY!r}: {exc}") from None
        except BadRequest as exc:
            raise InvalidArgument(str(exc)) from None
        cost = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_cost
        out.append((user, resource, cost or 1))
    return out


class Shape(NamedTuple):
    """What every status and header of one policy shares, built once per policy."""

    policy: Policy
    limit: Response.RateLimit  # current_limit
    policy_header: str  # RateLimit-Policy, as web.decision_response writes it
    ratelimit_prefix: str  # RateLimit, up to "r="
    capacity: float
    rate: float


def shape(policy: Policy) -> Shape:
    rule = policy.rule
    capacity = int(rule.capacity) if rule.capacity == int(rule.capacity) else rule.capacity
    return Shape(policy, current_limit(policy), f'"{policy.name}";q={capacity};w={math.ceil(rule.capacity / rule.rate)}',
                 f'"{policy.name}";r=', rule.capacity, rule.rate)


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """``ShouldRateLimit`` for one worker: parse, decide each descriptor locally, answer."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        settings = worker.settings
        self.domain, self.user_key = settings.rls_domain, settings.rls_user_key
        self._shapes: dict[int, Shape] = {}
        self._tick = 0

    def _shape(self, policy: Policy) -> Shape:
        found = self._shapes.get(id(policy))
        if found is None or found.policy is not policy:
            found = self._shapes[id(policy)] = shape(policy)
        return found

    def answer(self, request: rls_pb2.RateLimitRequest) -> Response:
        """The response, or InvalidArgument / Unavailable; no await, no I/O but the replica read."""
        worker = self.worker
        wanted = parse(request, self.domain, self.user_key)
        if wanted is None:
            metrics.RLS_NOT_DECIDED.labels("unknown_domain").inc()
            return Response(overall_code=OK, statuses=[Response.DescriptorStatus(code=OK) for _ in request.descriptors])
        rules = worker.rules
        planned = []
        for i, (user, resource, cost) in enumerate(wanted):
            try:
                policy = rules.policy(user, resource)
            except UnknownResource:
                raise InvalidArgument(f"descriptor {i}: no rule for resource {resource!r}") from None
            if policy.also:  # a rule with several limits: one bucket each, decided together
                keys = tuple(Rules.key(x, user, resource) for x in policy.limits)
            else:
                keys = (Rules.key(policy, user, resource),)
            planned.append((keys, policy, cost))
        if not worker.ready():
            raise Unavailable("this worker is stopping; try another one" if worker.stopping
                              else "tables are recovering; try again shortly")
        limiter = worker.limiter
        for keys, policy, _ in planned:
            if not all(limiter.accepts(key) for key in keys):
                metrics.decision(policy.name, "overloaded", "rls")
                raise Unavailable("this worker has too many admissions Kafka has not confirmed yet; try again shortly")
        now, capped = worker.clock(), worker.burst_cap
        # built in place (add/CopyFrom): half the cost of building sub-messages and copying them in
        response = Response()
        statuses, headers = response.statuses, response.response_headers_to_add
        overall, retry = OK, 0
        for keys, policy, cost in planned:
            if policy.also:
                decision, limit, every = self._decide_all(limiter, keys, policy, now, cost, capped)
            else:
                limit = policy
                self._tick += 1
                if self._tick % metrics.DECISION_SAMPLE:
                    decision = limiter.decide(keys[0], policy.rule, now, cost=cost, capped=capped)
                else:
                    started = time.perf_counter()
                    decision = limiter.decide(keys[0], policy.rule, now, cost=cost, capped=capped)
                    metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
            if decision.allowed:
                outcome, code = "allowed", OK
            elif limit.shadow:
                outcome, code = "shadow_refused", OK  # let through, as /protected's 200
            else:
                outcome, code = "refused", OVER_LIMIT
                overall = OVER_LIMIT
                if math.isfinite(decision.retry_after):  # infinite: a cost above capacity, never
                    retry = max(retry, 1, math.ceil(decision.retry_after))
            if not policy.also:
                metrics.decision(policy.name, outcome, "rls")
            f = self._shape(limit)
            left = decision.remaining
            remaining = max(0, math.floor(left))
            reset = max(0, math.ceil((f.capacity - left) / f.rate))  # seconds until full
            status = statuses.add(code=code, limit_remaining=remaining)
            status.current_limit.CopyFrom(f.limit)
            status.duration_until_reset.seconds = reset
            if policy.also:
                for x, d in every:
                    g = self._shape(x)
                    r = max(0, math.floor(d.remaining))
                    headers.add(key="RateLimit-Policy", value=g.policy_header)
                    headers.add(key="RateLimit",
                                value=f"{g.ratelimit_prefix}{r};t={max(0, math.ceil((g.capacity - d.remaining) / g.rate))}")
            else:
                headers.add(key="RateLimit-Policy", value=f.policy_header)
                headers.add(key="RateLimit", value=f"{f.ratelimit_prefix}{remaining};t={reset}")
        if retry:
            headers.add(key="Retry-After", value=str(retry))
        response.overall_code = overall
        return response

    def _decide_all(self, limiter, keys, policy: Policy, now: float, cost: int, capped: bool):
        """A descriptor whose rule has several limits: all or nothing (``Limiter.decide_all``), as
        ``/protected`` decides it. Returns the decision the status reports (the limit that refused,
        else the one with the fewest tokens left), that limit, and (limit, decision) of every limit
        for the headers."""
        limits = policy.limits
        shadow = tuple(x.shadow for x in limits) if any(x.shadow for x in limits) else ()
        refused, answers = limiter.decide_all(list(keys), [x.rule for x in limits], now, cost, capped, shadow)
        every = list(zip(limits, answers))
        if refused >= 0:
            for x, d in every:
                metrics.decision(x.name, "refused" if not d.allowed and not x.shadow else "not_charged", "rls")
            return answers[refused], limits[refused], every
        for x, d in every:
            metrics.decision(x.name, "allowed" if d.allowed else "shadow_refused", "rls")
        i = min(range(len(limits)), key=lambda j: answers[j].remaining)
        shown = answers[i]
        if any(not d.allowed for d in answers):  # only shadow limits refused: let through, say so
            j = next(j for j, d in enumerate(answers) if not d.allowed)
            return answers[j], limits[j], every
        return shown, limits[i], every

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext) -> Response:
        try:
            return self.answer(request)
        except InvalidArgument as exc:
            metrics.RLS_NOT_DECIDED.labels("invalid_argument").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            metrics.RLS_NOT_DECIDED.labels("unavailable").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


class Health(health.aio.HealthServicer):
    """The standard health service: ``SERVING`` (for ``""`` and the rate limit service) only
    while the worker is ready; ``Check`` looks at the worker, ``Watch`` follows ``refresh``."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    async def refresh(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.worker.ready()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            await self.set(service, status)

    async def Check(self, request, context):
        await self.refresh()
        return await super().Check(request, context)


def build_server(worker: Worker, address: str) -> tuple[grpc.aio.Server, Health]:
    """A grpc.aio server on the running event loop, with both services, bound to ``address``
    (not started). A port another process holds is an error here, not a silent share."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitService(worker), server)
    health_servicer = Health(worker)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind the gRPC server to {address}: {exc}") from None
    if not bound:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return server, health_servicer


def register(app: faust.App, worker: Worker) -> None:
    """Serve the rate limit and health services on ``grpc_port`` (nothing when it is 0),
    started with the app's other services (after table recovery, like the HTTP server)
    and stopped with it."""
    settings = worker.settings
    if not settings.grpc_port:
        return
    address = f"{settings.web_host}:{settings.grpc_port}"

    @app.service
    class GrpcServer(Service):
        """The worker's gRPC server, on the app's event loop."""

        server: grpc.aio.Server | None = None
        health: Health | None = None

        async def on_start(self) -> None:
            self.server, self.health = build_server(worker, address)
            await self.health.refresh()
            await self.server.start()
            log.info("rate limit service (gRPC) on %s, domain %r", address, settings.rls_domain)

        @Service.timer(0.5)
        async def _follow_readiness(self) -> None:
            # Watch subscribers learn readiness changes (ready, stopping) within half a second
            if self.health is not None:
                await self.health.refresh()

        async def on_stop(self) -> None:
            if self.health is not None:
                await self.health.enter_graceful_shutdown()
            if self.server is not None:
                await self.server.stop(grace=1.0)
