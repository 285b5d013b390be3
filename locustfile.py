"""Load on the workers with answers checked: ``make load``, or ``locust -f locustfile.py``.

The mix: a few hot callers that run far over their limits (most of their
answers are 429s), and a long tail of many users who are mostly let through;
both call ``POST /protected`` and ``POST /protected/{resource}`` for a few
resources. Weighted callers send an ``X-Cost`` of 1-5 and, after an admitted
request, report its real cost with ``POST /report`` (a fresh ``X-Report-ID``),
sometimes sending the same report again to another worker: the second must
answer ``"duplicate": true``. A 429 is a correct answer for a rate limiter; what counts as a
failure, with its reason in the report, is any other status, a body without
``allowed``/``remaining``/``limit``/``reset`` of the right types, a missing
or inconsistent ``RateLimit``/``RateLimit-Policy`` header, or a 429 without
an integer ``Retry-After`` ≥ 1.

Environment:

``BUCKETSTREAM_LOAD_HOSTS``      comma-separated worker URLs; users are spread over
                                 them round-robin, and each hot caller sends every
                                 request to the next one (default: ``--host`` only)
``BUCKETSTREAM_LOAD_RESOURCES``  resources for ``/protected/{resource}``
                                 (default ``search,upload,export``; empty: only ``/protected``)
``BUCKETSTREAM_LOAD_TAIL``       how many distinct long-tail users (default 100000)
``BUCKETSTREAM_LOAD_HOT``        how many hot callers (default 5)

Debug one user against a local worker: ``python locustfile.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re

from locust import FastHttpUser, between, constant_throughput, run_single_user, task

DEFAULT_HOST = "http://127.0.0.1:6066"


def _list(name: str, default: str) -> list[str]:
    return [x.strip().rstrip("/") for x in os.environ.get(name, default).split(",") if x.strip()]


HOSTS = _list("BUCKETSTREAM_LOAD_HOSTS", "")
RESOURCES = _list("BUCKETSTREAM_LOAD_RESOURCES", "search,upload,export")
TAIL = int(os.environ.get("BUCKETSTREAM_LOAD_TAIL", "100000"))
HOT = int(os.environ.get("BUCKETSTREAM_LOAD_HOT", "5"))
REGULARS = min(TAIL, 300)

#: (path, weight): the default bucket gets half the calls, the resources share the rest.
PATHS = [("/protected", max(1, len(RESOURCES)))] + [(f"/protected/{r}", 1) for r in RESOURCES]

_hosts = itertools.cycle(HOSTS) if HOSTS else None

# -- what a correct answer looks like ----------------------------------------------------

_ITEM = re.compile(r'^"[^"]+"((?:;[a-z][a-z0-9_-]*=[^;,\s]+)+)$')  # "<policy name>";k=v;k=v (one item)
_INT = re.compile(r"^\d+$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def _params(header: str, ints: tuple[str, ...], numbers: tuple[str, ...] = ()) -> dict[str, float] | str:
    """The named parameters of a RateLimit / RateLimit-Policy header, or why it is malformed."""
    m = _ITEM.match(header)
    if not m:
        return "not one item of the form \"name\";key=value..."
    params = dict(p.split("=", 1) for p in m.group(1)[1:].split(";"))
    for name in ints + numbers:
        value = params.get(name)
        if value is None:
            return f"no {name}= parameter"
        if not (_INT if name in ints else _NUMBER).match(value):
            return f"{name}={value} is not a {'non-negative int' if name in ints else 'number'}"
    return {name: float(params[name]) for name in ints + numbers}


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def problem(status: int, headers, text: str | None) -> str | None:
    """Why this answer to ``POST /protected[/resource]`` is wrong, or None if it is a correct one."""
    if status not in (200, 429):
        return f"unexpected status {status}: {(text or '')[:120]}"
    try:
        body = json.loads(text or "")
    except ValueError:
        return f"{status} body is not JSON: {(text or '')[:80]!r}"
    if not isinstance(body, dict):
        return f"{status} body is not a JSON object"
    for name, ok, kind in (("allowed", lambda v: isinstance(v, bool), "a boolean"),
                           ("remaining", lambda v: _int(v) and v >= 0, "an int >= 0"),
                           ("limit", lambda v: (_int(v) or isinstance(v, float)) and v > 0, "a number > 0"),
                           ("reset", lambda v: _int(v) and v >= 0, "an int >= 0")):
        if name not in body:
            return f"{status} body has no {name!r}"
        if not ok(body[name]):
            return f"{status} body {name!r} is {body[name]!r}, not {kind}"
    if body["allowed"] is not (status == 200):
        return f"{status} with allowed={body['allowed']}"
    if body["remaining"] > body["limit"]:
        return f"remaining {body['remaining']} exceeds limit {body['limit']}"
    policy = headers.get("RateLimit-Policy")
    if policy is None:
        return f"{status} without a RateLimit-Policy header"
    if isinstance(q := _params(policy, ("w",), ("q",)), str):
        return f"RateLimit-Policy {policy!r}: {q}"
    if q["q"] != body["limit"]:
        return f"RateLimit-Policy q={q['q']:g} but body limit {body['limit']}"
    ratelimit = headers.get("RateLimit")
    if ratelimit is None:
        return f"{status} without a RateLimit header"
    if isinstance(r := _params(ratelimit, ("r", "t")), str):
        return f"RateLimit {ratelimit!r}: {r}"
    if r["r"] != body["remaining"]:
        return f"RateLimit r={r['r']:g} but body remaining {body['remaining']}"
    if status == 429:
        retry = headers.get("Retry-After")
        if retry is None:
            return "429 without a Retry-After header"
        if not retry.isdigit() or int(retry) < 1:
            return f"429 with Retry-After {retry!r}, not an integer >= 1"
    return None


def report_problem(status: int, text: str | None, cost: int, duplicate: bool | None) -> str | None:
    """Why this answer to ``POST /report`` is wrong, or None. ``duplicate``: what the answer
    must say (None: either, e.g. for a first send that may race a resend)."""
    if status != 200:
        return f"report answered {status}: {(text or '')[:120]}"
    try:
        body = json.loads(text or "")
    except ValueError:
        return f"report body is not JSON: {(text or '')[:80]!r}"
    if not isinstance(body, dict) or body.get("charged") != cost:
        return f"report body does not say charged={cost}: {(text or '')[:120]}"
    if not isinstance(body.get("tokens"), (int, float)) or not _int(body.get("remaining")):
        return f"report body without tokens/remaining: {(text or '')[:120]}"
    if duplicate is not None and body.get("duplicate") is not duplicate:
        return f"report duplicate={body.get('duplicate')!r}, expected {duplicate}"
    return None


# -- the users ---------------------------------------------------------------------------

class _Caller(FastHttpUser):
    abstract = True

    def __init__(self, environment) -> None:
        if _hosts is not None:
            self.host = next(_hosts)  # before the client is built: spread users over the workers
        super().__init__(environment)

    def user_id(self) -> str:
        raise NotImplementedError

    def url(self, path: str) -> str:
        return path  # this user's own worker

    @task
    def call(self) -> None:
        path = random.choices([p for p, _ in PATHS], [w for _, w in PATHS])[0]
        url = self.url(path)
        with self.client.post(url, headers={"X-User-ID": self.user_id()}, name=path,
                              catch_response=True) as resp:
            if resp.status_code == 0:  # no HTTP answer at all
                resp.failure(f"no answer from {url}: {resp.error!r}")
                return
            reason = problem(resp.status_code, resp.headers, resp.text)
            if reason is None:
                resp.success()  # a 429 too: the limiter said no, correctly
            else:
                resp.failure(reason)


class TailUser(_Caller):
    """The long tail: each request as one of TAIL users, a fifth of them from a few hundred
    regulars; each of them calls now and then, so they are mostly let through."""

    weight = 9
    wait_time = between(0.05, 0.2)

    def user_id(self) -> str:
        pool = REGULARS if random.random() < 0.2 else TAIL
        return f"user-{random.randrange(pool)}"


class HotCaller(_Caller):
    """A few callers that run far over their limits (a runaway script, a scraper), through a
    round-robin balancer: each request goes to the next worker, so the limit must hold across them."""

    weight = 1
    wait_time = constant_throughput(20)

    def on_start(self) -> None:
        self.me = f"hot-{random.randrange(HOT)}"
        self.workers = itertools.cycle(HOSTS or [self.host])

    def user_id(self) -> str:
        return self.me

    def url(self, path: str) -> str:
        return next(self.workers) + path


class WeightedCaller(_Caller):
    """Requests that cost 1-5 tokens, then a report of what they really used (an LLM-style API),
    one report in four sent a second time to another worker (a retry): charged once."""

    weight = 2
    wait_time = between(0.1, 0.3)

    def on_start(self) -> None:
        self.me = f"weighted-{random.randrange(1000)}"
        self.workers = itertools.cycle(HOSTS or [self.host])
        self.reports = 0

    def user_id(self) -> str:
        return self.me

    @task
    def call(self) -> None:
        cost = random.randint(1, 5)
        with self.client.post("/protected", headers={"X-User-ID": self.me, "X-Cost": str(cost)},
                              name="/protected (X-Cost)", catch_response=True) as resp:
            reason = problem(resp.status_code, resp.headers, resp.text)
            if reason is None:
                resp.success()
            else:
                resp.failure(reason)
                return
            if resp.status_code != 200:
                return
        self.reports += 1
        report_id = f"{self.me}-{random.getrandbits(64):x}-{self.reports}"
        used = random.randint(1, 10)
        headers = {"X-User-ID": self.me, "X-Cost": str(used), "X-Report-ID": report_id}
        sends = [(self.url("/report"), False)]
        if random.random() < 0.25:
            sends.append((next(self.workers) + "/report", None))  # may race the first: either answer
        for url, duplicate in sends:
            with self.client.post(url, headers=headers, name="/report", catch_response=True) as resp:
                reason = report_problem(resp.status_code, resp.text, used, duplicate)
                if reason is None:
                    resp.success()
                else:
                    resp.failure(reason)


if __name__ == "__main__":
    TailUser.host = HotCaller.host = HOSTS[0] if HOSTS else DEFAULT_HOST
    run_single_user(HotCaller)
