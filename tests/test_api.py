"""The HTTP surface: status codes, bodies, headers, rules from a limits file, shadow mode.

Parsing and rule resolution are pure and tested without a broker; everything
else goes through a real worker on the real broker.
"""

from __future__ import annotations

import json

import http.client
import subprocess
import sys
import textwrap
import time

import pytest
from multidict import CIMultiDict

from bucketstream.rules import Rules
from bucketstream.settings import ConfigError
from bucketstream.validate import BadRequest, parse_user

LIMITS = textwrap.dedent("""
    [default]
    capacity = 3
    rate = 0.01

    [resources.search]
    capacity = 5
    rate = 0.01

    [resources.upload]
    capacity = 1
    rate = 0.01
    shadow = true

    [tiers.gold]
    capacity = 20
    rate = 0.01
    [tiers.gold.resources.search]
    capacity = 50
    rate = 0.01

    [users]
    alice = "gold"
""")


def write(tmp_path, text: str):
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return path


# -- pure: header parsing and rule resolution ------------------------------------------

@pytest.mark.parametrize("headers, problem", [
    ([], "missing X-User-ID"),
    ([("X-User-ID", "a"), ("X-User-ID", "b")], "more than once"),
    ([("X-User-ID", "")], "empty"),
    ([("X-User-ID", "x" * 257)], "longer than 256 bytes"),
    ([("X-User-ID", "é" * 129)], "longer than 256 bytes"),  # 258 bytes in UTF-8
    ([("X-User-ID", "a\tb")], "control characters"),
    ([("X-User-ID", "a\x7fb")], "control characters"),
])
def test_bad_user_ids_are_named(headers, problem):
    with pytest.raises(BadRequest, match=problem):
        parse_user(CIMultiDict(headers))


def test_good_user_ids_pass_unchanged():
    for user in ["alice", "x" * 256, "user:42/eu", "ünïcode"]:
        assert parse_user(CIMultiDict([("x-user-id", user)])) == user


@pytest.mark.parametrize("allowed, remaining, retry_after, shadow", [
    (True, 2.9, 0.0, False), (True, 0.0, 0.0, False), (False, -3.5, 0.2, False), (False, 0.4, 99.01, False),
    (False, 0.0, float("inf"), False), (False, 0.3, 4.0, True),
])
@pytest.mark.parametrize("name, capacity, rate", [("default", 3, 0.01), ("gold/search", 2.5, 7), ('we"ird\\ü', 1e6, 1e6)])
def test_decision_bodies_are_exactly_the_json_of_their_fields(allowed, remaining, retry_after, shadow, name,
                                                             capacity, rate):
    """The hot path builds the body from per-policy fragments; it must equal json.dumps of the fields."""
    import json
    import math

    from bucketstream import crdt, web
    from bucketstream.rules import Policy

    policy = Policy.build(name, capacity, rate)
    resp = web.decision_response(crdt.Decision(allowed, remaining, retry_after), policy, shadow_refused=shadow)
    left = max(0, math.floor(remaining))
    reset = max(0, math.ceil((capacity - remaining) / rate))
    limit = int(capacity) if capacity == int(capacity) else capacity
    body = {"allowed": allowed or shadow, "remaining": left, "limit": limit, "reset": reset, "policy": name}
    headers = {"RateLimit-Policy": f'"{name}";q={limit};w={math.ceil(capacity / rate)}',
               "RateLimit": f'"{name}";r={left};t={reset}'}
    status = 200
    if shadow:
        body["shadow"] = "would refuse"
    elif not allowed and math.isinf(retry_after):
        body["error"] = "this request costs more than the bucket holds"
        status = 429
    elif not allowed:
        body["retry_after"] = headers["Retry-After"] = max(1, math.ceil(retry_after))
        headers["Retry-After"] = str(headers["Retry-After"])
        status = 429
    assert resp.body == json.dumps(body).encode()
    assert resp.status == status and resp.content_type == "application/json"
    assert {k: v for k, v in resp.headers.items() if k != "Content-Type"} == headers


def test_rules_resolve_default_resource_tier_and_tier_resource(tmp_path):
    rules = Rules.load(write(tmp_path, LIMITS))
    assert rules.policy("bob", None).rule.capacity == 3
    assert rules.policy("bob", "search").rule.capacity == 5
    assert rules.policy("bob", "other").name == "default"  # not strict: default rule, own bucket
    assert rules.policy("alice", None).name == "gold"
    assert rules.policy("alice", "search").name == "gold/search"
    assert rules.policy("alice", "upload").name == "gold"
    assert rules.policy("bob", "upload").shadow is True
    keys = {Rules.key(rules.policy(u, r), u, r) for u in ["bob", "alice"] for r in [None, "search", "other"]}
    assert len(keys) == 6  # every (user, resource) has its own bucket


def test_a_changed_rule_gets_a_new_key_so_old_state_is_never_read_against_it(tmp_path):
    before = Rules.load(write(tmp_path, LIMITS))
    after = Rules.load(write(tmp_path, LIMITS.replace("capacity = 3", "capacity = 4")))
    assert Rules.key(before.policy("bob", None), "bob", None) != Rules.key(after.policy("bob", None), "bob", None)
    assert Rules.key(before.policy("bob", "search"), "bob", "search") == \
        Rules.key(after.policy("bob", "search"), "bob", "search")


@pytest.mark.parametrize("text, named", [
    ("[default]\ncapacity = -1\nrate = 1\n", "default.capacity"),
    ("[default]\ncapacity = 1\nrate = 0\n", "default.rate"),
    ("[default]\ncapacity = 1\nrate = inf\n", "default.rate"),
    ("[resources.search]\ncapacity = 1\n", "resources.search.rate"),
    ("[resources.\"a b\"]\ncapacity = 1\nrate = 1\n", "resource name 'a b'"),
    ("[users]\nbob = \"platinum\"\n", "tier 'platinum'"),
    ("[default]\ncapacity = 1\nrate = 1\nburst = 3\n", "default.burst"),
    ("[default\ncapacity = 1\n", "not valid TOML"),
])
def test_limits_file_errors_name_the_file_the_key_and_the_problem(tmp_path, text, named):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Rules.load(path)
    assert str(path) in str(err.value) and named in str(err.value)


def test_a_missing_limits_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Rules.load(tmp_path / "nope.toml")


def test_worker_refuses_to_start_with_a_bad_limits_file(tmp_path):
    path = write(tmp_path, "[default]\ncapacity = 0\nrate = 1\n")
    proc = subprocess.run([sys.executable, "-m", "bucketstream.cli", "worker", "--data-dir", str(tmp_path)],
                          env={"BUCKETSTREAM_LIMITS": str(path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert str(path) in proc.stderr and "default.capacity" in proc.stderr


# -- a real worker ----------------------------------------------------------------------

@pytest.fixture
def worker(pool, tmp_path):
    (w,) = pool.start(1, limits=write(tmp_path, LIMITS))
    return w


def raw(w, method: str, path: str, headers: list[tuple[str, str]]):
    """A request with exactly these headers (http.client would merge nothing)."""
    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=5)
    try:
        conn.putrequest(method, path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


@pytest.mark.broker
def test_200_then_429_with_body_and_ratelimit_headers(worker):
    import json

    for left in [2, 1, 0]:
        status, headers, body = worker.protected("bob")
        assert status == 200
        assert body == {"allowed": True, "remaining": left, "limit": 3, "reset": body["reset"], "policy": "default"}
        assert headers["RateLimit-Policy"] == '"default";q=3;w=300'
        assert headers["RateLimit"] == f'"default";r={left};t={body["reset"]}'
        assert headers["Content-Type"].startswith("application/json")
    status, headers, body = worker.protected("bob")
    assert status == 429 and body["allowed"] is False and body["remaining"] == 0
    assert int(headers["Retry-After"]) == body["retry_after"] >= 99  # one token every 100 s
    assert headers["RateLimit"].startswith('"default";r=0;')
    json.dumps(body)


@pytest.mark.broker
def test_retry_after_is_honest(pool):
    """After Retry-After seconds the same request really succeeds (and not long before)."""
    (w,) = pool.start(1, capacity=2, rate=0.5)
    assert [w.protected("carol")[0] for _ in range(2)] == [200, 200]
    status, headers, _ = w.protected("carol")
    assert status == 429
    wait = int(headers["Retry-After"])
    assert wait == 2
    time.sleep(wait)
    assert w.protected("carol")[0] == 200


@pytest.mark.broker
def test_resources_and_tiers_have_their_own_buckets(worker):
    assert [worker.protected("dave", "/protected/search")[0] for _ in range(6)] == [200] * 5 + [429]
    assert worker.protected("dave")[0] == 200  # the default bucket is untouched
    status, headers, body = worker.protected("alice", "/protected/search")
    assert status == 200 and body["limit"] == 50 and body["policy"] == "gold/search"
    assert headers["RateLimit-Policy"].startswith('"gold/search";q=50;')
    assert worker.bucket("dave")["consumed"] == 1
    assert worker.bucket("dave?resource=search")["consumed"] == 5


@pytest.mark.broker
def test_a_bucket_is_shown_in_its_users_terms_and_the_crdt_only_with_debug(worker):
    for _ in range(2):
        worker.protected("erin")
    status, _, body = worker.request("GET", "/buckets/erin")
    view = json.loads(body)
    assert status == 200
    assert {"tokens", "capacity", "rate", "seconds_until_full", "workers_spent", "replication_delay"} <= set(view)
    assert not {"counters", "wasted", "consumed", "slot", "replica_consumed"} & set(view), view
    assert view["capacity"] == 3 and view["rate"] == 0.01 and view["workers_spent"] == 1
    # 2 of 3 spent, refill 0.01/s: about a token now, full in about 200 s
    assert 1 <= view["tokens"] < 1.1 and 190 < view["seconds_until_full"] <= 200
    debug = worker.bucket("erin")  # ?debug=1
    assert debug["consumed"] == 2 and sum(debug["counters"].values()) == 2
    status, _, body = worker.request("GET", "/buckets/erin?debug=yes")
    assert status == 400 and "debug" in json.loads(body)["error"]


@pytest.mark.broker
def test_shadow_rule_counts_but_never_refuses(worker):
    answers = [worker.protected("erin", "/protected/upload") for _ in range(4)]
    assert [s for s, _, _ in answers] == [200] * 4
    assert [b.get("shadow") for _, _, b in answers] == [None, "would refuse", "would refuse", "would refuse"]
    assert all(b["allowed"] for _, _, b in answers)
    status, _, text = worker.request("GET", "/metrics")
    assert status == 200
    text = text.decode()
    assert 'bucketstream_decisions_total{outcome="shadow_refused",policy="upload",protocol="http"} 3.0' in text
    assert 'bucketstream_decisions_total{outcome="allowed",policy="upload",protocol="http"} 1.0' in text


@pytest.mark.broker
@pytest.mark.parametrize("headers, problem", [
    ([], "missing X-User-ID header"),
    ([("X-User-ID", "a"), ("X-User-ID", "b")], "X-User-ID header given more than once"),
    ([("X-User-ID", "")], "X-User-ID is empty"),
    ([("X-User-ID", "x" * 300)], "X-User-ID is longer than 256 bytes"),
])
def test_bad_requests_get_400_with_a_json_error(worker, headers, problem):
    import json

    status, resp, body = raw(worker, "POST", "/protected", headers)
    assert status == 400 and resp.getheader("Content-Type").startswith("application/json")
    assert json.loads(body) == {"error": problem}


def raw_bytes(w, request: bytes) -> tuple[int, dict, bytes]:
    """Send these exact bytes; (status, headers, body) of the answer (read until the server closes)."""
    import socket

    with socket.create_connection(("127.0.0.1", w.port), timeout=5) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.broker
@pytest.mark.parametrize("byte", [b"\x01", b"\x7f", b"\x00", b"\x1b"])
def test_control_characters_in_the_header_get_400_with_a_json_error(worker, byte):
    """TAB is legal HTTP and reaches our validator; other control bytes are not HTTP at
    all: aiohttp's parser refuses them before any handler runs. Either way: 400 with a
    JSON body naming the problem, never a 5xx, and the worker keeps serving."""
    import json

    status, headers, body = raw_bytes(
        worker, b"POST /protected HTTP/1.1\r\nHost: x\r\nX-User-ID: a" + byte + b"b\r\nContent-Length: 0\r\n\r\n")
    assert status == 400 and headers["Content-Type"].startswith("application/json"), (status, headers, body)
    error = json.loads(body)["error"]
    assert error == "bad request: invalid header value char in X-User-ID", error
    status, _, body = raw(worker, "POST", "/protected", [("X-User-ID", "a\tb")])
    assert status == 400 and json.loads(body) == {"error": "X-User-ID contains control characters"}
    assert worker.protected("still-fine")[0] == 200


@pytest.mark.broker
def test_malformed_http_gets_400_json_not_plain_text(worker):
    import json

    status, headers, body = raw_bytes(worker, b"POST /protected HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"].startswith("bad request")


@pytest.mark.broker
@pytest.mark.parametrize("method, path, status", [
    ("GET", "/protected", 405),
    ("PUT", "/protected/search", 405),
    ("DELETE", "/protected", 405),
    ("POST", "/nowhere", 404),
    ("GET", "/buckets/" + "x" * 300, 400),
    ("GET", "/buckets/bob?resource=a%20b", 400),
    ("POST", "/protected/a%20b", 400),
])
def test_wrong_methods_paths_and_keys_answer_json_4xx(worker, method, path, status):
    import json

    got, resp, body = raw(worker, method, path, [("X-User-ID", "bob")])
    assert got == status
    assert resp.getheader("Content-Type").startswith("application/json")
    assert "error" in json.loads(body)
    if status == 405:
        assert resp.getheader("Allow") == "POST" and json.loads(body) == {"error": "method not allowed"}
    if path == "/nowhere":
        assert json.loads(body) == {"error": "not found"}


@pytest.mark.broker
def test_the_root_logger_is_not_at_debug_in_a_running_worker(worker):
    """At log level WARNING (the pool's) Faust's spinner would set the root logger to DEBUG,
    so every debug call of Faust and aiokafka built a LogRecord; cli.py turns it off."""
    import json

    stats = json.loads(worker.request("GET", "/stats")[2])
    assert stats["root_log_level"] == "WARNING"


@pytest.mark.broker
def test_health_readiness_and_metrics(worker):
    assert worker.request("GET", "/healthz")[0] == 200
    assert worker.request("GET", "/readyz")[0] == 200
    worker.protected("frank")
    status, headers, text = worker.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b'bucketstream_decisions_total{outcome="allowed",policy="default",protocol="http"} 1.0' in text
    assert b"sampled: 1 decision in 16" in text
    for name in ["bucketstream_decisions_total", "bucketstream_decision_seconds_bucket",
                 "bucketstream_deltas_flushed_total", "bucketstream_updates_merged_total",
                 "bucketstream_replication_delay_seconds_bucket", "bucketstream_keys", "bucketstream_ready 1.0"]:
        assert name.encode() in text, name


@pytest.mark.broker
def test_back_pressure_503_for_new_keys_while_kafka_has_not_confirmed(pool, broker):
    """With the broker frozen nothing this worker admits is confirmed: past
    max_unconfirmed_keys new users get 503 JSON + Retry-After: 1, users it holds
    state of are still decided, and once Kafka is back new users are admitted again. Every
    admission is published (hold_share 0): a held-back one waits for nothing, so never 503s."""
    import json
    import os
    import signal

    from tests.cluster import wait_until

    (w,) = pool.start(1, max_unconfirmed_keys=3, hold_share=0)
    pid = int((broker.state_dir / "pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        answers = [w.protected(f"new-{i}") for i in range(5)]
        assert [s for s, _, _ in answers] == [200, 200, 200, 503, 503]
        _, headers, body = answers[3]
        assert headers["Retry-After"] == "1" and "Kafka has not confirmed" in body["error"]
        assert w.protected("new-0")[0] == 200  # a key it holds state of
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: json.loads(w.request("GET", "/stats")[2])["own_unreflected_keys"] == 0, 30, 0.1,
               "the backlog confirmed")
    assert w.protected("new-9")[0] == 200
    metrics = w.request("GET", "/metrics")[2].decode()
    assert 'bucketstream_decisions_total{outcome="overloaded",policy="default",protocol="http"} 2.0' in metrics
