"""Web views: ``POST /protected``, bucket inspection, health.

Handlers are thin: parse, call the limiter, map the answer to HTTP. The
decision is local (``tables.limiter``): no Kafka round trip, no disk write,
no hop to another worker. Every error a client can cause is a 4xx with a JSON
body ``{"error": ...}``; the middleware turns anything unexpected into a
JSON 500 and logs it (a bug, never a client's fault).
"""

from __future__ import annotations

import json
import logging
import math
import time

from aiohttp import web as aioweb
from aiokafka.partitioner import murmur2
from faust.web import Request, View

from bucketstream import crdt, metrics, recovery
from bucketstream.app import SLOT, app, settings
from bucketstream.rules import Policy, Rules, UnknownResource
from bucketstream.validate import BadRequest, check_key, check_resource, parse_user
from bucketstream.tables import RULES, buckets, limiter, tables_ready

log = logging.getLogger(__name__)

_JSON = "application/json"


def partition_for(key: bytes) -> int:
    """Kafka's default partitioner, as the producer and the table use it."""
    return (murmur2(key) & 0x7FFFFFFF) % settings.partitions


def _json(body: dict, status: int = 200, headers: dict | None = None) -> aioweb.Response:
    return aioweb.Response(body=json.dumps(body).encode(), status=status, headers=headers, content_type=_JSON)


def error(status: int, message: str, headers: dict | None = None) -> aioweb.Response:
    return _json({"error": message}, status, headers)


def _number(x: float) -> float | int:
    return int(x) if x == int(x) else x


def decision_response(decision: crdt.Decision, policy: Policy, shadow_refused: bool = False) -> aioweb.Response:
    """200 or 429 with the JSON body and the IETF RateLimit headers.

    ``RateLimit-Policy: "<name>";q=<capacity>;w=<seconds to refill from empty>``
    ``RateLimit: "<name>";r=<whole tokens left>;t=<seconds until full>``
    (draft-ietf-httpapi-ratelimit-headers); a 429 adds ``Retry-After``: whole
    seconds, rounded up, after which the same request is admitted.
    """
    rule = policy.rule
    remaining = max(0, math.floor(decision.remaining))
    reset = max(0, math.ceil((rule.capacity - decision.remaining) / rule.rate))
    limit = _number(rule.capacity)
    window = math.ceil(rule.capacity / rule.rate)
    headers = {
        "RateLimit-Policy": f'"{policy.name}";q={limit};w={window}',
        "RateLimit": f'"{policy.name}";r={remaining};t={reset}',
    }
    body = {"allowed": decision.allowed or shadow_refused, "remaining": remaining, "limit": limit, "reset": reset,
            "policy": policy.name}
    if decision.allowed:
        return _json(body, 200, headers)
    if shadow_refused:
        body["shadow"] = "would refuse"
        return _json(body, 200, headers)
    if not math.isfinite(decision.retry_after):
        body["error"] = "this request costs more than the bucket holds"
        return _json(body, 429, headers)
    retry = max(1, math.ceil(decision.retry_after))
    headers["Retry-After"] = str(retry)
    body["retry_after"] = retry
    return _json(body, 429, headers)


def not_ready() -> aioweb.Response:
    return error(503, "tables are recovering; try again shortly", {"Retry-After": "1"})


BURST_CAP = settings.burst_cap


def protect(request, resource: str | None) -> aioweb.Response:
    """The hot path: parse, decide locally, answer. No await, no I/O besides the local replica read."""
    try:
        user = parse_user(request.headers)
        resource = check_resource(resource)
    except BadRequest as exc:
        metrics.BAD_REQUESTS.labels("bad_request").inc()
        return error(400, str(exc))
    try:
        policy = RULES.policy(user, resource)
    except UnknownResource:
        metrics.BAD_REQUESTS.labels("unknown_resource").inc()
        return error(404, f"no rule for resource {resource!r}")
    if not tables_ready():
        return not_ready()
    started = time.perf_counter()
    decision = limiter.decide(Rules.key(policy, user, resource), policy.rule, time.time(), capped=BURST_CAP)
    metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
    if decision.allowed:
        metrics.decision(policy.name, "allowed")
        return decision_response(decision, policy)
    if policy.shadow:
        metrics.decision(policy.name, "shadow_refused")
        return decision_response(decision, policy, shadow_refused=True)
    metrics.decision(policy.name, "refused")
    return decision_response(decision, policy)


@app.page("/protected")
class Protected(View):
    """POST /protected: one token from the caller's default bucket, decided locally."""

    async def post(self, request: Request) -> aioweb.Response:
        return protect(request, None)


@app.page("/protected/{resource}")
class ProtectedResource(View):
    """POST /protected/{resource}: one token from the caller's bucket for that resource."""

    async def post(self, request: Request, resource: str) -> aioweb.Response:
        return protect(request, resource)


@app.page("/buckets/{user}")
class BucketView(View):
    """GET /buckets/{user}[?resource=R]: this worker's view of one bucket (operators, tests)."""

    async def get(self, request: Request, user: str) -> aioweb.Response:
        try:
            user = check_key(user, "bucket key")
            resource = check_resource(request.query.get("resource"))
            policy = RULES.policy(user, resource)
        except BadRequest as exc:
            return error(400, str(exc))
        except UnknownResource:
            return error(404, f"no rule for resource {resource!r}")
        now = time.time()
        k = Rules.key(policy, user, resource)
        replica = limiter.replica(k)
        own = limiter.own_state(k)
        view = limiter.view(k)
        partition = partition_for(k)
        ready = tables_ready()
        actives = app.assignor.assigned_actives() if ready else set()
        owner = any(tp.partition == partition and tp.topic == buckets.changelog_topic_name for tp in actives)
        rule = policy.rule
        return _json(
            {
                "key": k.decode("utf-8", "surrogateescape"),
                "user": user,
                "resource": resource,
                "policy": policy.name,
                "shadow": policy.shadow,
                "tokens": crdt.tokens(view, rule, now),
                "capacity": _number(rule.capacity),
                "rate": _number(rule.rate),
                "consumed": view.consumed,
                "counters": {str(n): c for n, c in view.counters.items()},
                "wasted": view.wasted,
                "replica_consumed": replica.consumed,
                "own_unreflected": own is not None and not crdt.leq(own, replica),
                "partition": partition,
                "role": "active" if owner else "standby",
                "worker": settings.node_id,
                "slot": SLOT,
                "ready": ready,
            }
        )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict:
    return {"samples": len(values), "p50": percentile(values, 0.50), "p99": percentile(values, 0.99),
            "max": max(values) if values else None}


@app.page("/stats")
class Stats(View):
    """GET /stats: what this worker holds and how far behind its replicas are (JSON)."""

    async def get(self, request: Request) -> aioweb.Response:
        delays = list(limiter.delays)
        ready = tables_ready()
        topic = buckets.changelog_topic_name
        assignor = app.assignor
        return _json(
            {
                "worker": settings.node_id,
                "slot": SLOT,
                "ready": ready,
                "rebalancing": app.rebalancing,
                "partitions": {
                    "active": sorted(tp.partition for tp in assignor.assigned_actives() if tp.topic == topic),
                    "standby": sorted(tp.partition for tp in assignor.assigned_standbys() if tp.topic == topic),
                },
                "active_keys": len(buckets) if ready else None,
                "own_unreflected_keys": limiter.own_keys,
                "live_workers": limiter.live_workers,
                "burst_cap": {"enabled": BURST_CAP, "default_rule": _finite(limiter.burst_cap(RULES.default.rule))},
                "cached_keys": limiter.cached_keys,
                "replication_delay": _summary(delays),
                "update_lag": _summary(list(limiter.update_lags)),
                "changelog_lag": _summary(list(limiter.changelog_lags)),
                "bulk_recovery": recovery.STATS.as_dict(),
            }
        )


@app.page("/metrics")
class Metrics(View):
    """GET /metrics: Prometheus text format."""

    async def get(self, request: Request) -> aioweb.Response:
        body, content_type = metrics.render()
        return aioweb.Response(body=body, headers={"Content-Type": content_type})


@app.page("/healthz")
class Health(View):
    async def get(self, request: Request) -> aioweb.Response:
        return _json({"status": "ok", "worker": settings.node_id})


@app.page("/readyz")
class Ready(View):
    async def get(self, request: Request) -> aioweb.Response:
        if not tables_ready():
            return not_ready()
        return _json({"status": "ready", "worker": settings.node_id})


@aioweb.middleware
async def json_errors(request: aioweb.Request, handler):
    """Unknown paths, wrong methods and bugs answer JSON too; nothing leaks a traceback."""
    try:
        return await handler(request)
    except aioweb.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != _JSON:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error(exc.status, exc.reason.lower(), headers)
        raise
    except Exception:
        log.exception("unhandled error for %s %s", request.method, request.path)
        return error(500, "internal error")


app.web.web_app.middlewares.append(json_errors)
