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

from bucketstream import crdt
from bucketstream.app import SLOT, app, settings
from bucketstream.tables import DEFAULT_RULE, buckets, limiter, tables_ready

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 256
POLICY = "default"
_JSON = "application/json"


class BadRequest(ValueError):
    """A request this service refuses; the message is shown to the client."""


def parse_user(headers) -> str:
    """The ``X-User-ID`` of a request, or BadRequest naming what is wrong with it."""
    values = headers.getall("X-User-ID", ())
    if not values:
        raise BadRequest("missing X-User-ID header")
    if len(values) > 1:
        raise BadRequest("X-User-ID header given more than once")
    return check_key(values[0], "X-User-ID")


def check_key(value: str, what: str) -> str:
    if not value:
        raise BadRequest(f"{what} is empty")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise BadRequest(f"{what} is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise BadRequest(f"{what} contains control characters")
    return value


def bucket_key(user: str) -> bytes:
    return user.encode("utf-8", "surrogateescape")


def partition_for(key: bytes) -> int:
    """Kafka's default partitioner, as the producer and the table use it."""
    return (murmur2(key) & 0x7FFFFFFF) % settings.partitions


def _json(body: dict, status: int = 200, headers: dict | None = None) -> aioweb.Response:
    return aioweb.Response(body=json.dumps(body).encode(), status=status, headers=headers, content_type=_JSON)


def error(status: int, message: str, headers: dict | None = None) -> aioweb.Response:
    return _json({"error": message}, status, headers)


def decision_response(decision: crdt.Decision, rule: crdt.Rule, now: float) -> aioweb.Response:
    remaining = max(0, math.floor(decision.remaining))
    # seconds until the bucket is full again (RateLimit "t": when the quota is restored)
    reset = max(0, math.ceil((rule.capacity - decision.remaining) / rule.rate))
    capacity = rule.capacity if rule.capacity != int(rule.capacity) else int(rule.capacity)
    window = max(1, math.ceil(rule.capacity / rule.rate))
    headers = {
        "RateLimit-Policy": f'"{POLICY}";q={capacity};w={window}',
        "RateLimit": f'"{POLICY}";r={remaining};t={reset}',
    }
    body = {"allowed": decision.allowed, "remaining": remaining, "limit": capacity, "reset": reset}
    if decision.allowed:
        return _json(body, 200, headers)
    retry = max(1, math.ceil(decision.retry_after)) if math.isfinite(decision.retry_after) else None
    if retry is None:
        return _json({**body, "error": "cost exceeds the bucket capacity"}, 429, headers)
    headers["Retry-After"] = str(retry)
    body["retry_after"] = retry
    return _json(body, 429, headers)


def not_ready() -> aioweb.Response:
    return error(503, "tables are recovering; try again shortly", {"Retry-After": "1"})


@app.page("/protected")
class Protected(View):
    """POST /protected: one token from the caller's bucket, decided locally."""

    async def post(self, request: Request) -> aioweb.Response:
        try:
            user = parse_user(request.headers)
        except BadRequest as exc:
            return error(400, str(exc))
        if not tables_ready():
            return not_ready()
        now = time.time()
        decision = limiter.decide(bucket_key(user), DEFAULT_RULE, now)
        return decision_response(decision, DEFAULT_RULE, now)


@app.page("/buckets/{key}")
class BucketView(View):
    """GET /buckets/{key}: this worker's view of one bucket (for operators and tests)."""

    async def get(self, request: Request, key: str) -> aioweb.Response:
        try:
            key = check_key(key, "bucket key")
        except BadRequest as exc:
            return error(400, str(exc))
        now = time.time()
        k = bucket_key(key)
        replica = limiter.replica(k)
        own = limiter.own_state(k)
        view = limiter.view(k)
        partition = partition_for(k)
        tp_active = app.assignor.assigned_actives() if tables_ready() else set()
        owner = any(tp.partition == partition and tp.topic == buckets.changelog_topic_name for tp in tp_active)
        return _json(
            {
                "key": key,
                "tokens": crdt.tokens(view, DEFAULT_RULE, now),
                "capacity": DEFAULT_RULE.capacity,
                "rate": DEFAULT_RULE.rate,
                "consumed": view.consumed,
                "counters": {str(n): c for n, c in view.counters.items()},
                "wasted": view.wasted,
                "replica_consumed": replica.consumed,
                "own_unreflected": own is not None and not crdt.leq(own, replica),
                "partition": partition,
                "role": "active" if owner else "standby",
                "worker": settings.node_id,
                "slot": SLOT,
                "ready": tables_ready(),
            }
        )


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
                "cached_keys": limiter.cached_keys,
                "replication_delay": _summary(delays),
                "update_lag": _summary(list(limiter.update_lags)),
                "changelog_lag": _summary(list(limiter.changelog_lags)),
            }
        )


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
