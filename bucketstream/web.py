"""Web routes, registered on a Faust app for a Worker: ``POST /protected``, bucket inspection, health.

Access: ``POST /protected``, ``/healthz`` and ``/readyz`` are open to whoever
reaches the port (clients, load balancers, orchestrators). The admin views,
``/buckets/...``, ``/stats`` and ``/metrics``, tell about any user's usage:
with ``BUCKETSTREAM_ADMIN_TOKEN`` set they want ``Authorization: Bearer
<token>`` (``admin_guard``) and answer 401 otherwise; unset, they are open
(local development, and a port only a private network reaches).

Handlers are thin: parse, call the limiter, map the answer to HTTP. The
decision is local (the worker's ``limiter``): no Kafka round trip, no disk
write, no hop to another worker. The response formatting at module level is
pure (``decision_response``): importing this module builds nothing. Every error a client can cause is a 4xx with a JSON
body ``{"error": ...}``, also for what aiohttp's parser and router refuse
(``_JsonRequestHandler``); anything unexpected is a JSON 500, logged (a bug,
never a client's fault).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import sys
import time
from http import HTTPStatus
from collections.abc import Callable
from typing import NamedTuple

import faust
from aiohttp import web as aioweb
from aiohttp.web_protocol import RequestHandler
from faust.web import Request, View

from bucketstream import crdt, metrics, patches
from bucketstream.rules import Policy, Rules, UnknownResource
from bucketstream.validate import BadRequest, check_key, check_resource, parse_cost, parse_report_id, parse_user
from bucketstream.worker import Worker

log = logging.getLogger(__name__)

_JSON = "application/json"


def _json(body: dict, status: int = 200, headers: dict | None = None) -> aioweb.Response:
    return aioweb.Response(body=json.dumps(body).encode(), status=status, headers=headers, content_type=_JSON)


def error(status: int, message: str, headers: dict | None = None) -> aioweb.Response:
    return _json({"error": message}, status, headers)


def admin_guard(token: str | None) -> Callable[[aioweb.Request], aioweb.Response | None]:
    """``request -> None`` (let it through) or a 401 answer, for the admin views.

    No token: everything passes. Otherwise the request must carry
    ``Authorization: Bearer <token>``, compared in constant time.
    """
    if token is None:
        return lambda request: None
    wanted = token.encode()
    challenge = {"WWW-Authenticate": 'Bearer realm="bucketstream admin"'}

    def guard(request: aioweb.Request) -> aioweb.Response | None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), wanted):
            return None
        what = "wrong bearer token" if scheme.lower() == "bearer" else "this path needs Authorization: Bearer <token>"
        return error(401, what, challenge)

    return guard


def _number(x: float) -> float | int:
    return int(x) if x == int(x) else x


class _Format(NamedTuple):
    """What every answer of one policy shares, encoded once (see ``decision_response``)."""

    policy: Policy
    policy_header: str  # RateLimit-Policy
    ratelimit_prefix: str  # RateLimit, up to "r="
    limit_json: str  # ', "limit": <capacity>, "reset": ' ...
    policy_json: str  # ', "policy": "<name>"'
    capacity: float
    rate: float


_formats: dict[int, _Format] = {}


def _format(policy: Policy) -> _Format:
    f = _formats.get(id(policy))
    if f is None or f.policy is not policy:
        rule = policy.rule
        limit = _number(rule.capacity)
        window = math.ceil(rule.capacity / rule.rate)
        f = _formats[id(policy)] = _Format(
            policy,
            f'"{policy.name}";q={limit};w={window}',
            f'"{policy.name}";r=',
            f', "limit": {json.dumps(limit)}, "reset": ',
            f', "policy": {json.dumps(policy.name)}',
            rule.capacity,
            rule.rate,
        )
    return f


_SHADOW = ', "shadow": ' + json.dumps("would refuse")
_TOO_BIG = ', "error": ' + json.dumps("this request costs more than the bucket holds")
_floor, _ceil, _isfinite, _Response = math.floor, math.ceil, math.isfinite, aioweb.Response


def decision_response(decision: crdt.Decision, policy: Policy, shadow_refused: bool = False) -> aioweb.Response:
    """200 or 429 with the JSON body and the IETF RateLimit headers.

    ``RateLimit-Policy: "<name>";q=<capacity>;w=<seconds to refill from empty>``
    ``RateLimit: "<name>";r=<whole tokens left>;t=<seconds until full>``
    (draft-ietf-httpapi-ratelimit-headers); a 429 adds ``Retry-After``: whole
    seconds, rounded up, after which the same request is admitted.

    The body is exactly what ``json.dumps`` makes of ``{"allowed", "remaining",
    "limit", "reset", "policy"[, "shadow" | "error" | "retry_after"]}``, built
    from fragments encoded once per policy (the hot path; test_api pins it).
    """
    f = _format(policy)
    left = decision.remaining
    remaining = _floor(left)
    if remaining < 0:
        remaining = 0
    reset = _ceil((f.capacity - left) / f.rate)
    if reset < 0:
        reset = 0
    headers = {
        "Content-Type": _JSON,
        "RateLimit-Policy": f.policy_header,
        "RateLimit": f"{f.ratelimit_prefix}{remaining};t={reset}",
    }
    if decision.allowed:
        body = f'{{"allowed": true, "remaining": {remaining}{f.limit_json}{reset}{f.policy_json}}}'
        return _Response(body=body.encode(), headers=headers)
    head = f'{{"allowed": {"true" if shadow_refused else "false"}, "remaining": {remaining}{f.limit_json}{reset}{f.policy_json}'
    if shadow_refused:
        return _Response(body=f"{head}{_SHADOW}}}".encode(), headers=headers)
    if not _isfinite(decision.retry_after):
        return _Response(body=f"{head}{_TOO_BIG}}}".encode(), status=429, headers=headers)
    retry = max(1, _ceil(decision.retry_after))
    headers["Retry-After"] = str(retry)
    return _Response(body=f'{head}, "retry_after": {retry}}}'.encode(), status=429, headers=headers)


def cost_too_big(cost: int, policy: Policy) -> str:
    return (f"X-Cost {cost} is more than policy {policy.name!r} can ever grant "
            f"(capacity {_number(policy.rule.capacity)})")


def not_ready(worker: Worker) -> aioweb.Response:
    if worker.stopping:
        return error(503, "this worker is stopping; try another one", {"Retry-After": "1"})
    return error(503, "tables are recovering; try again shortly", {"Retry-After": "1"})


def overloaded() -> aioweb.Response:
    return error(503, "this worker has too many admissions Kafka has not confirmed yet; try again shortly",
                 {"Retry-After": "1"})


#: The decision-latency histogram times 1 decision in this many (two clock reads and a
#: locked observe per request cost more than the decision they measure).
DECISION_SAMPLE = metrics.DECISION_SAMPLE


def protector(worker: Worker):
    """``protect(request, resource)``: the hot path of one worker. Parse, decide locally,
    answer; no await, no I/O besides the local replica read. What it needs is bound
    once, here, as closure variables (as fast to reach as globals)."""
    rules, limiter, ready, clock, capped = worker.rules, worker.limiter, worker.ready, worker.clock, worker.burst_cap
    decide, accepts, decision = limiter.decide, limiter.accepts, metrics.decision
    perf_counter, observe = time.perf_counter, metrics.DECISION_SECONDS.observe
    tick = 0

    def protect(request, resource: str | None) -> aioweb.Response:
        nonlocal tick
        headers = request.headers
        try:
            user = parse_user(headers)
            if resource is not None:
                resource = check_resource(resource)
            # X-Cost: absent on the default path, which pays one dict lookup for it
            cost = 1 if headers.get("X-Cost") is None else parse_cost(headers)
        except BadRequest as exc:
            metrics.BAD_REQUESTS.labels("bad_request").inc()
            return error(400, str(exc))
        try:
            policy = rules.policy(user, resource)
        except UnknownResource:
            metrics.BAD_REQUESTS.labels("unknown_resource").inc()
            return error(404, f"no rule for resource {resource!r}")
        if cost != 1 and cost > policy.rule.capacity:
            metrics.BAD_REQUESTS.labels("bad_request").inc()
            return error(400, cost_too_big(cost, policy))
        if policy.also:
            return protect_all(user, resource, policy, cost)
        if not ready():
            return not_ready(worker)
        key = Rules.key(policy, user, resource)
        if not accepts(key):
            decision(policy.name, "overloaded")
            return overloaded()
        tick += 1
        if tick % DECISION_SAMPLE:
            answer = decide(key, policy.rule, clock(), cost, capped)
        else:
            started = perf_counter()
            answer = decide(key, policy.rule, clock(), cost, capped)
            observe(perf_counter() - started)
        if answer.allowed:
            decision(policy.name, "allowed")
            return decision_response(answer, policy)
        if policy.shadow:
            decision(policy.name, "shadow_refused")
            return decision_response(answer, policy, shadow_refused=True)
        decision(policy.name, "refused")
        return decision_response(answer, policy)

    decide_all = limiter.decide_all
    key_of = Rules.key

    def protect_all(user: str, resource: str | None, policy: Policy, cost: int) -> aioweb.Response:
        """A rule with several limits: admitted only if every limit admits; then all are charged."""
        m = _multi(policy)
        if cost > m.min_capacity:
            metrics.BAD_REQUESTS.labels("bad_request").inc()
            return error(400, cost_too_big(cost, next(x for x in m.limits if cost > x.rule.capacity)))
        if not ready():
            return not_ready(worker)
        keys = [key_of(limit, user, resource) for limit in m.limits]
        for key in keys:
            if not accepts(key):
                decision(policy.name, "overloaded")
                return overloaded()
        refused, answers = decide_all(keys, m.rules, clock(), cost, capped, m.shadow)
        for limit, answer in zip(m.limits, answers):
            if answer.allowed:
                decision(limit.name, "allowed" if refused < 0 else "not_charged")
            else:
                decision(limit.name, "shadow_refused" if limit.shadow else "refused")
        return decisions_response(answers, policy, refused)

    return protect


class _Multi(NamedTuple):
    """What every answer of a rule with several limits shares, built once (``decisions_response``)."""

    policy: Policy
    limits: tuple[Policy, ...]
    rules: tuple[crdt.Rule, ...]
    shadow: tuple[bool, ...]  # () when no limit is in shadow mode
    min_capacity: float
    formats: tuple[_Format, ...]
    names: tuple[str, ...]  # each limit's name, JSON-encoded
    entry_heads: tuple[str, ...]  # '{"policy": <name>, "allowed": '
    limit_json: tuple[str, ...]  # each limit's capacity, JSON-encoded
    policy_header: str  # RateLimit-Policy: every limit


_multis: dict[int, _Multi] = {}


def _multi(policy: Policy) -> _Multi:
    m = _multis.get(id(policy))
    if m is None or m.policy is not policy:
        limits = policy.limits
        formats = tuple(_format(x) for x in limits)
        names = tuple(json.dumps(x.name) for x in limits)
        m = _multis[id(policy)] = _Multi(
            policy, limits, tuple(x.rule for x in limits),
            tuple(x.shadow for x in limits) if any(x.shadow for x in limits) else (),
            min(x.rule.capacity for x in limits), formats, names,
            tuple(f'{{"policy": {n}, "allowed": ' for n in names),
            tuple(json.dumps(_number(x.rule.capacity)) for x in limits),
            ", ".join(f.policy_header for f in formats),
        )
    return m


def decisions_response(answers: list[crdt.Decision], policy: Policy, refused: int) -> aioweb.Response:
    """The answer for a rule with several limits: 200 or 429, every limit in the body and
    in the RateLimit headers (a list, as the IETF draft allows).

    The body is the JSON of ``{"allowed", "remaining", "limit", "reset", "policy"[,
    "refused_by", "retry_after" | "shadow", "shadow_refused_by"], "limits"}``:
    ``policy`` (and ``remaining``, ``limit``, ``reset``) are those of the limit that
    refused, or, when admitted, of the limit with the fewest tokens left; ``limits`` has
    each limit's ``{"policy", "allowed", "remaining", "limit", "reset"}``. ``Retry-After``
    is the time until every limit would admit (the longest wait: buckets only fill
    while nothing is spent). Built from fragments encoded once per rule (the hot path).
    """
    m = _multi(policy)
    entries = []
    ratelimit = []
    about = refused
    lowest = math.inf
    for i, answer in enumerate(answers):
        f = m.formats[i]
        left = answer.remaining
        if refused < 0 and left < lowest:
            lowest, about = left, i
        remaining = _floor(left)
        if remaining < 0:
            remaining = 0
        reset = _ceil((f.capacity - left) / f.rate)
        if reset < 0:
            reset = 0
        ratelimit.append(f"{f.ratelimit_prefix}{remaining};t={reset}")
        entries.append((remaining, reset, f'{m.entry_heads[i]}{"true" if answer.allowed else "false"}, '
                                          f'"remaining": {remaining}, "limit": {m.limit_json[i]}, "reset": {reset}}}'))
    remaining, reset, _ = entries[about]
    headers = {"Content-Type": _JSON, "RateLimit-Policy": m.policy_header, "RateLimit": ", ".join(ratelimit)}
    head = (f'{{"allowed": {"true" if refused < 0 else "false"}, "remaining": {remaining}, '
            f'"limit": {m.limit_json[about]}, "reset": {reset}, "policy": {m.names[about]}')
    tail = f', "limits": [{", ".join(e[2] for e in entries)}]}}'
    if refused >= 0:
        wait = 0.0
        for answer, limit in zip(answers, m.limits):
            if not limit.shadow and answer.retry_after > wait:
                wait = answer.retry_after
        retry = max(1, _ceil(wait))
        headers["Retry-After"] = str(retry)
        body = f'{head}, "refused_by": {m.names[refused]}, "retry_after": {retry}{tail}'
        return _Response(body=body.encode(), status=429, headers=headers)
    if m.shadow:
        shadowed = [m.names[i] for i, answer in enumerate(answers) if not answer.allowed]
        if shadowed:
            body = f'{head}, "shadow": "would refuse", "shadow_refused_by": [{", ".join(shadowed)}]{tail}'
            return _Response(body=body.encode(), headers=headers)
    return _Response(body=f"{head}{tail}".encode(), headers=headers)


def report_response(limits: tuple[Policy, ...], lefts: list[float], cost: int, duplicate: bool,
                    report_id: str) -> aioweb.Response:
    """200 after a report: each limit's level now (``tokens`` is negative in debt) and the
    RateLimit headers, as for a decision; the top-level fields are those of the limit
    with the fewest tokens."""
    entries, policy_headers, ratelimit = [], [], []
    for limit, left in zip(limits, lefts):
        f = _format(limit)
        remaining = max(0, _floor(left))
        reset = max(0, _ceil((f.capacity - left) / f.rate))
        policy_headers.append(f.policy_header)
        ratelimit.append(f"{f.ratelimit_prefix}{remaining};t={reset}")
        entries.append({"policy": limit.name, "tokens": left, "remaining": remaining, "limit": _number(f.capacity),
                        "reset": reset})
    about = min(range(len(lefts)), key=lefts.__getitem__)
    body = {"charged": cost, "duplicate": duplicate, "report_id": report_id, **entries[about], "limits": entries}
    headers = {"RateLimit-Policy": ", ".join(policy_headers), "RateLimit": ", ".join(ratelimit)}
    return _json(body, headers=headers)


def reporter(worker: Worker):
    """``report(request, resource)``: charge a cost known after the response, once per id."""
    rules, limiter, ready, clock = worker.rules, worker.limiter, worker.ready, worker.clock

    def report(request, resource: str | None) -> aioweb.Response:
        headers = request.headers
        try:
            user = parse_user(headers)
            if resource is not None:
                resource = check_resource(resource)
            if headers.get("X-Cost") is None:
                raise BadRequest("missing X-Cost header (the tokens this report charges)")
            cost = parse_cost(headers)
            report_id = parse_report_id(headers)
        except BadRequest as exc:
            metrics.BAD_REQUESTS.labels("bad_request").inc()
            return error(400, str(exc))
        try:
            policy = rules.policy(user, resource)
        except UnknownResource:
            metrics.BAD_REQUESTS.labels("unknown_resource").inc()
            return error(404, f"no rule for resource {resource!r}")
        if not ready():
            return not_ready(worker)
        limits = policy.limits
        keys = [Rules.key(limit, user, resource) for limit in limits]
        if not all(limiter.accepts(key) for key in keys):
            metrics.decision(policy.name, "overloaded")
            return overloaded()
        slot = crdt.report_slot(report_id)
        for key in keys:  # checked on every limit first: a conflict charges none of them
            have = limiter.view(key).counters.get(slot)
            if have is not None and have != cost:
                metrics.BAD_REQUESTS.labels("report_conflict").inc()
                return error(409, f"report {report_id!r} was already charged {have} tokens, not {cost}")
        now = clock()
        lefts = []
        duplicate = True
        for key, limit in zip(keys, limits):
            left, seen = limiter.report(key, limit.rule, slot, now, cost)
            lefts.append(left)
            duplicate = duplicate and seen
            metrics.decision(limit.name, "report_duplicate" if seen else "reported")
        return report_response(limits, lefts, cost, duplicate, report_id)

    return report


def peek(worker: Worker, user: str, resource: str | None) -> dict:
    """Every limit that applies to ``user`` (and ``resource``), in the user's terms; spends nothing."""
    policy = worker.rules.policy(user, resource)
    now = worker.clock()
    limits = []
    for limit in policy.limits:
        rule = limit.rule
        left = crdt.tokens(worker.limiter.view(Rules.key(limit, user, resource)), rule, now)
        limits.append({
            "policy": limit.name,
            "tokens": left,
            "remaining": max(0, _floor(left)),
            "capacity": _number(rule.capacity),
            "rate": _number(rule.rate),
            "seconds_until_full": max(0.0, (rule.capacity - left) / rule.rate),
            "shadow": limit.shadow,
        })
    return {"user": user, "resource": resource, "limits": limits}


def pick_limit(policy: Policy, limit: str | None) -> Policy:
    """The limit of a rule named ``limit`` (``day`` or ``default:day``; None: the first)."""
    if limit is None:
        return policy
    for x in policy.limits:
        if limit in (x.name, x.name.rsplit(":", 1)[-1]):
            return x
    raise BadRequest(f"policy {policy.name!r} has no limit {limit!r} (it has: {', '.join(x.name for x in policy.limits)})")


def bucket_view(worker: Worker, user: str, resource: str | None, debug: bool, limit: str | None = None) -> dict:
    """One bucket in its user's terms; with ``debug``, the CRDT's internals as well.

    A rule with several limits has a bucket per limit: ``limit`` names which (the first
    by default); ``limits`` lists them all."""
    rule_policy = worker.rules.policy(user, resource)
    policy = pick_limit(rule_policy, limit)
    limiter = worker.limiter
    now = worker.clock()
    k = Rules.key(policy, user, resource)
    view = limiter.view(k)
    rule = policy.rule
    tokens = crdt.tokens(view, rule, now)
    ready = worker.ready()
    out = {
        "key": k.decode("utf-8", "surrogateescape"),
        "user": user,
        "resource": resource,
        "policy": policy.name,
        "limits": [x.name for x in rule_policy.limits],
        "shadow": policy.shadow,
        "tokens": tokens,
        "capacity": _number(rule.capacity),
        "rate": _number(rule.rate),
        "seconds_until_full": max(0.0, (rule.capacity - tokens) / rule.rate),
        # how many worker processes (slots) this bucket was ever spent from
        "workers_spent": sum(1 for c in view.counters.values() if c),
        "worker": worker.settings.node_id,
        "ready": ready,
        # this worker's recent replication delay (all keys): how stale the view above may be
        "replication_delay": _summary(list(limiter.delays)),
    }
    if debug:
        replica = limiter.replica(k)
        own = limiter.own_state(k)
        partition = worker.partition_for(k)
        owner = ready and partition in worker.active_partitions()
        out.update({
            "consumed": view.consumed,
            "counters": {str(n): c for n, c in view.counters.items()},
            "wasted": view.wasted,
            "replica_consumed": replica.consumed,
            "own_unreflected": own is not None and not crdt.leq(own, replica),
            # bucketstream.hold: kept to this worker within the allowance (published only if the key
            # comes near its limit), and to be published late
            "held": limiter.holds is not None and k in limiter.holds,
            "deferred": limiter.holds is not None and limiter.holds.is_deferred(k),
            "partition": partition,
            "role": "active" if owner else "standby",
            "slot": worker.slot,
        })
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _summary(values: list[float]) -> dict:
    """Count, p50, p99 and max of ``values``, sorted once (five of these of 4,096 values
    each, sorted twice, held the loop for about 10 ms of every /stats)."""
    ordered = sorted(values)
    n = len(ordered)
    return {"samples": n, "p50": ordered[min(n - 1, n // 2)] if n else None,
            "p99": ordered[min(n - 1, int(0.99 * n))] if n else None, "max": ordered[-1] if n else None}


def register(app: faust.App, worker: Worker, table: faust.Table) -> None:
    """Add the worker's routes to ``app``'s web server, and JSON answers for every error."""
    limiter = worker.limiter
    protect = protector(worker)
    token = worker.settings.admin_token
    denied = admin_guard(token.get_secret_value() if token is not None else None)
    unflushed = patches.unflushed(app, table)

    # POST /protected and /protected/{resource} are plain aiohttp routes on the
    # worker's own (Faust's) web server, not Faust views: Faust's View dispatch and
    # its per-request sensors cost more than the decision. Other methods on these
    # paths get aiohttp's 405 (with Allow), made JSON by _JsonRequestHandler.
    async def protected(request: aioweb.Request) -> aioweb.Response:
        """POST /protected: one token from the caller's default bucket, decided locally."""
        return protect(request, None)

    async def protected_resource(request: aioweb.Request) -> aioweb.Response:
        """POST /protected/{resource}: one token from the caller's bucket for that resource."""
        return protect(request, request.match_info["resource"])

    report = reporter(worker)

    async def reported(request: aioweb.Request) -> aioweb.Response:
        """POST /report: charge X-Cost tokens to the caller's default bucket, once per X-Report-ID."""
        return report(request, None)

    async def reported_resource(request: aioweb.Request) -> aioweb.Response:
        """POST /report/{resource}: the same, to the caller's bucket for that resource."""
        return report(request, request.match_info["resource"])

    router = app.web.web_app.router
    router.add_post("/protected", protected)
    router.add_post("/protected/{resource}", protected_resource)
    router.add_post("/report", reported)
    router.add_post("/report/{resource}", reported_resource)

    @app.page("/limits/{user}")
    class Limits(View):
        """GET /limits/{user}[?resource=R]: how much is left, for every limit that applies; spends nothing."""

        async def get(self, request: Request, user: str) -> aioweb.Response:
            try:
                user = check_key(user, "user")
                resource = check_resource(request.query.get("resource"))
                return _json(peek(worker, user, resource))
            except BadRequest as exc:
                return error(400, str(exc))
            except UnknownResource:
                return error(404, f"no rule for resource {resource!r}")

    @app.page("/buckets/{user}")
    class BucketView(View):
        """GET /buckets/{user}[?resource=R][&limit=L][&debug=1]: this worker's view of one bucket, in
        its user's terms; ``limit`` picks one of a rule's several limits; ``debug=1`` adds the
        CRDT's internals (operators, tests)."""

        async def get(self, request: Request, user: str) -> aioweb.Response:
            if (refused := denied(request)) is not None:
                return refused
            try:
                user = check_key(user, "bucket key")
                resource = check_resource(request.query.get("resource"))
                debug = request.query.get("debug", "0")
                if debug not in ("0", "1"):
                    raise BadRequest(f"debug must be 0 or 1, got {debug!r}")
                limit = request.query.get("limit")
                return _json(bucket_view(worker, user, resource, debug == "1", limit))
            except BadRequest as exc:
                return error(400, str(exc))
            except UnknownResource:
                return error(404, f"no rule for resource {resource!r}")

    @app.page("/stats")
    class Stats(View):
        """GET /stats: what this worker holds and how far behind its replicas are (JSON)."""

        async def get(self, request: Request) -> aioweb.Response:
            if (refused := denied(request)) is not None:
                return refused
            delays = list(limiter.delays)
            ready = worker.ready()
            topic = table.changelog_topic_name
            assignor = app.assignor
            actives = worker.active_partitions()
            active_keys = await worker.count_keys(actives) if ready else None
            return _json(
                {
                    "worker": worker.settings.node_id,
                    "slot": worker.slot,
                    "ready": ready,
                    "rebalancing": app.rebalancing,
                    "partitions": {
                        "active": actives,
                        "standby": sorted(tp.partition for tp in assignor.assigned_standbys() if tp.topic == topic),
                    },
                    "active_keys": active_keys,
                    # own states waiting for Kafka; held back ones (bucketstream.hold) wait for nothing
                    "own_unreflected_keys": limiter.waiting_keys,
                    "held_keys": limiter.held_keys,
                    "held_admissions": limiter.holds.held if limiter.holds is not None else 0,
                    "deferred_admissions": limiter.holds.deferred if limiter.holds is not None else 0,
                    "pending_sends": limiter.pending_sends,
                    "live_workers": limiter.live_workers,
                    "burst_cap": {"enabled": worker.burst_cap,
                                  "default_rule": _finite(limiter.burst_cap(worker.rules.default.rule))},
                    "cached_keys": limiter.cached_keys,
                    # DEBUG here would mean every log.debug of Faust/aiokafka builds a record (cli.py: no spinner)
                    "root_log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                    "replication_delay": _summary(delays),
                    "update_lag": _summary(list(limiter.update_lags)),
                    "peer_lag": _summary(list(limiter.peer_lags)),
                    "return_lag": _summary(list(limiter.return_lags)),
                    "changelog_lag": _summary(list(limiter.changelog_lags)),
                    # changelog events read (in the view, found by point reads) but not yet in RocksDB
                    "unflushed_changelog_keys": len(unflushed),
                    "rocksdb_memory_bytes": worker.store_memory(),
                    # Python's own objects: flat while the RSS grows means the allocator, not a leak
                    "python_allocated_blocks": sys.getallocatedblocks(),
                    "bulk_recovery": worker.bulk_recovery.as_dict(),
                }
            )


    @app.page("/metrics")
    class Metrics(View):
        """GET /metrics: Prometheus text format."""

        async def get(self, request: Request) -> aioweb.Response:
            if (refused := denied(request)) is not None:
                return refused
            body, content_type = metrics.render()
            return aioweb.Response(body=body, headers={"Content-Type": content_type})

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> aioweb.Response:
            return _json({"status": "ok", "worker": worker.settings.node_id})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> aioweb.Response:
            if not worker.ready():
                return not_ready(worker)
            return _json({"status": "ready", "worker": worker.settings.node_id})

    patches.serve_with_handler(app, _JsonRequestHandler)


_PARSER_HEADER = re.compile(r"b'([!#$%&*+.^_`|~0-9A-Za-z-]+):")


class _JsonRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, answering every error in JSON.

    * Errors aiohttp raises before or around a handler (no such path: 404, a
      method the path does not take: 405 with ``Allow``) are plain-text
      ``HTTPException``s; ``finish_response`` swaps them for ``{"error": ...}``
      (what a middleware did before, without a middleware's cost per request).
    * Requests aiohttp's HTTP parser refuses (a control byte in a header value,
      a malformed request line ...) never reach a handler: ``handle_error``
      answers them, 400 with ``{"error": "bad request: <what the parser said>"}``.
    * Anything unexpected in a handler is a 500 ``{"error": "internal error"}``,
      logged with its traceback, never shown to the client.
    """

    async def finish_response(self, request, resp, start_time):
        if isinstance(resp, aioweb.HTTPException) and resp.status >= 400 and resp.content_type != _JSON:
            headers = {"Allow": resp.headers["Allow"]} if "Allow" in resp.headers else None
            resp = error(resp.status, resp.reason.lower(), headers)
        return await super().finish_response(request, resp, start_time)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> aioweb.StreamResponse:
        if request.writer.output_size > 0:  # an answer is on its way already: aiohttp closes the connection
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            log.error("unhandled error for %s %s", request.method, request.path, exc_info=exc)
            text = "internal error"
        else:
            log.debug("refused a malformed request: %s", message or exc)
            try:
                reason = HTTPStatus(status).phrase.lower()
            except ValueError:
                reason = "error"
            text = reason
            detail = (message or (str(exc) if exc is not None else "")).strip()
            if detail:
                # "Invalid header value char:\n\n  b'X-User-ID: a\\x01b'\n  ^": name the header too
                text = f"{reason}: {detail.splitlines()[0].rstrip(':').lower()}"
                header = _PARSER_HEADER.search(detail)
                if header and "header" in text:
                    text += f" in {header.group(1)}"
        resp = error(status, text)
        resp.force_close()
        return resp
