"""Weighted requests, reports (a cost charged after the response) and peeking (#18).

The parsing is pure and tested without a broker; the HTTP answers and the
replication of reports go through real workers on the real broker. The
laws of the core's ``debit`` are in ``test_crdt.py``.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from bucketstream.validate import BadRequest, parse_cost, parse_report_id
from tests.cluster import wait_until

# -- pure: the X-Cost and X-Report-ID headers ---------------------------------------------

BAD_COSTS = [
    ("0", "X-Cost must be at least 1"),
    ("000", "X-Cost must be at least 1"),
    ("-1", "X-Cost must be a whole number of tokens in decimal digits, got '-1'"),
    ("+1", "X-Cost must be a whole number of tokens in decimal digits, got '+1'"),
    ("1.5", "X-Cost must be a whole number of tokens in decimal digits, got '1.5'"),
    ("2.0", "X-Cost must be a whole number of tokens in decimal digits, got '2.0'"),
    ("1e3", "X-Cost must be a whole number of tokens in decimal digits, got '1e3'"),
    ("", "X-Cost must be a whole number of tokens in decimal digits, got ''"),
    ("five", "X-Cost must be a whole number of tokens in decimal digits, got 'five'"),
    ("٣", "X-Cost must be a whole number of tokens in decimal digits, got '٣'"),  # a non-ASCII digit
    ("9" * 16, "X-Cost must be below 10**15 tokens"),
]


@pytest.mark.parametrize("value, problem", BAD_COSTS)
def test_bad_costs_are_named(value, problem):
    with pytest.raises(BadRequest) as exc:
        parse_cost(CIMultiDict([("X-Cost", value)]))
    assert str(exc.value) == problem


def test_good_costs_parse_and_a_repeated_cost_header_is_refused():
    assert parse_cost(CIMultiDict([("x-cost", "1")])) == 1
    assert parse_cost(CIMultiDict([("X-Cost", "007")])) == 7
    assert parse_cost(CIMultiDict([("X-Cost", "9" * 15)])) == 10**15 - 1
    with pytest.raises(BadRequest, match="X-Cost header given more than once"):
        parse_cost(CIMultiDict([("X-Cost", "1"), ("X-Cost", "2")]))


BAD_REPORT_IDS = [
    ([], "missing X-Report-ID header (a report needs an id: the same id is charged once)"),
    ([("X-Report-ID", "a"), ("X-Report-ID", "b")], "X-Report-ID header given more than once"),
    ([("X-Report-ID", "")], "X-Report-ID is empty"),
    ([("X-Report-ID", "x" * 129)], "X-Report-ID is longer than 128 bytes"),
]


@pytest.mark.parametrize("headers, problem", BAD_REPORT_IDS + [([("X-Report-ID", "a\tb")], "control characters")])
def test_bad_report_ids_are_named(headers, problem):
    with pytest.raises(BadRequest, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_report_id(CIMultiDict(headers))


# -- real workers ------------------------------------------------------------------------


def post(w, path: str, user: str, cost: int | str | None = None, report_id: str | None = None):
    headers = {"X-User-ID": user}
    if cost is not None:
        headers["X-Cost"] = cost.encode() if isinstance(cost, str) else str(cost)  # bytes: UTF-8 on the wire
    if report_id is not None:
        headers["X-Report-ID"] = report_id
    status, resp_headers, body = w.request("POST", path, headers)
    return status, resp_headers, json.loads(body)


def peek(w, user: str, query: str = "") -> dict:
    status, _, body = w.request("GET", f"/limits/{user}{query}")
    assert status == 200, body
    return json.loads(body)


@pytest.mark.broker
def test_a_cost_5_request_against_4_tokens_is_refused_with_the_time_until_5_exist(pool):
    (w,) = pool.start(1, capacity=10, rate=0.5)
    status, _, body = post(w, "/protected", "ann", cost=6)
    assert status == 200 and body["remaining"] == 4
    status, headers, body = post(w, "/protected", "ann", cost=5)
    # one token missing at 0.5 token/s: 2 s (a little less, as time has passed: rounded up)
    assert status == 429 and body["allowed"] is False and body["remaining"] == 4
    assert headers["Retry-After"] == "2" and body["retry_after"] == 2
    status, _, body = post(w, "/protected", "ann", cost=4)  # the refusal spent nothing
    assert status == 200 and body["remaining"] == 0
    # no header is a cost of one, as before
    status, _, body = post(w, "/protected", "ben")
    assert status == 200 and body["remaining"] == 9


@pytest.mark.broker
def test_every_malformed_cost_report_and_id_gets_a_4xx_json_error(pool):
    (w,) = pool.start(1, capacity=10, rate=0.5)
    for path in ("/protected", "/protected/search", "/report", "/report/search"):
        for value, problem in BAD_COSTS:
            status, headers, body = post(w, path, "cat", cost=value, report_id="r1")
            assert (status, body) == (400, {"error": problem}), (path, value)
            assert headers["Content-Type"].startswith("application/json")
    status, _, body = post(w, "/protected", "cat", cost=11)
    assert (status, body) == (400, {"error": "X-Cost 11 is more than policy 'default' can ever grant (capacity 10)"})
    status, _, body = post(w, "/report", "cat", report_id="r1")
    assert (status, body) == (400, {"error": "missing X-Cost header (the tokens this report charges)"})
    for headers, problem in BAD_REPORT_IDS:
        status, _, body = raw_post(w, "/report", [("X-User-ID", "cat"), ("X-Cost", "1"), *headers])
        assert (status, body) == (400, {"error": problem})
    status, _, body = post(w, "/report", "", cost=1, report_id="r1")
    assert (status, body) == (400, {"error": "X-User-ID is empty"})
    status, _, body = post(w, "/report/no*such", "cat", cost=1, report_id="r1")
    assert status == 400 and "resource name" in body["error"]
    assert peek(w, "cat")["limits"][0]["tokens"] == pytest.approx(10)  # nothing was charged
    status, _, body = w.request("GET", "/limits/cat?resource=a*b")
    assert status == 400 and "resource name" in json.loads(body)["error"]
    status, _, body = w.request("GET", "/limits/" + "x" * 300)
    assert status == 400 and json.loads(body) == {"error": "user is longer than 256 bytes"}
    status, _, body = w.request("GET", "/report")
    assert status == 405 and "error" in json.loads(body)


def raw_post(w, path: str, headers: list[tuple[str, str]]):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=5)
    try:
        conn.putrequest("POST", path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp, json.loads(resp.read())
    finally:
        conn.close()


def settled_tokens(workers, user: str) -> list[float]:
    """Each worker's tokens for ``user`` once every worker has published what it charged
    and all show the same spending (the state Kafka holds)."""
    def settled():
        stats = [json.loads(w.request("GET", "/stats")[2]) for w in workers]
        if any(s["own_unreflected_keys"] or s["pending_sends"] for s in stats):
            return False
        views = [w.bucket(user) for w in workers]
        return all(v["consumed"] == views[0]["consumed"] for v in views)
    wait_until(settled, 30, 0.05, "reports replicated")
    return [peek(w, user)["limits"][0]["tokens"] for w in workers]


@pytest.mark.broker
def test_a_report_sent_to_two_workers_is_charged_once_and_two_reports_twice(pool):
    a, b = pool.start(2, capacity=10, rate=0.01)
    # the same report on both workers at once, before either has heard of the other's
    first = post(a, "/report", "dan", cost=3, report_id="job-1")
    second = post(b, "/report", "dan", cost=3, report_id="job-1")
    assert first[0] == second[0] == 200
    assert first[2]["duplicate"] is False and first[2]["charged"] == 3 and first[2]["remaining"] == 7
    assert [math.floor(t) for t in settled_tokens([a, b], "dan")] == [7, 7]
    # once known, a repeat is a duplicate that changes nothing, and another cost is a conflict
    status, _, body = post(b, "/report", "dan", cost=3, report_id="job-1")
    assert status == 200 and body["duplicate"] is True and math.floor(body["tokens"]) == 7
    status, _, body = post(a, "/report", "dan", cost=4, report_id="job-1")
    assert (status, body) == (409, {"error": "report 'job-1' was already charged 3 tokens, not 4"})
    # another id is another charge
    status, _, body = post(b, "/report", "dan", cost=3, report_id="job-2")
    assert status == 200 and body["duplicate"] is False
    assert [math.floor(t) for t in settled_tokens([a, b], "dan")] == [4, 4]
    metrics = a.request("GET", "/metrics")[2].decode()
    assert 'bucketstream_decisions_total{outcome="reported",policy="default",protocol="http"} 1.0' in metrics


@pytest.mark.broker
def test_a_report_may_leave_a_debt_that_refuses_until_refill_repays_it(pool):
    import time

    (w,) = pool.start(1, capacity=10, rate=2)
    status, headers, body = post(w, "/report", "eve", cost=15, report_id="big")
    assert status == 200 and body["tokens"] == pytest.approx(-5, abs=0.1) and body["remaining"] == 0
    assert headers["RateLimit"].startswith('"default";r=0;')
    status, headers, body = post(w, "/protected", "eve")
    assert status == 429
    wait = int(headers["Retry-After"])
    assert wait == 3  # 6 tokens at 2/s
    time.sleep(wait - 0.5)  # the time that has to pass, not a synchronization
    assert post(w, "/protected", "eve")[0] == 429
    time.sleep(0.6)
    assert post(w, "/protected", "eve")[0] == 200


@pytest.mark.broker
def test_peek_shows_every_limit_in_the_users_terms_and_spends_nothing(pool):
    (w,) = pool.start(1, capacity=10, rate=0.5)
    post(w, "/protected", "fay", cost=4)
    for _ in range(3):
        body = peek(w, "fay")
        assert body["user"] == "fay" and body["resource"] is None
        (limit,) = body["limits"]
        assert limit["policy"] == "default" and limit["capacity"] == 10 and limit["rate"] == 0.5
        assert limit["remaining"] == 6 and 6 <= limit["tokens"] < 6.5
        assert limit["seconds_until_full"] == pytest.approx((10 - limit["tokens"]) / 0.5)
        assert limit["shadow"] is False
    assert peek(w, "fay", "?resource=search")["limits"][0]["tokens"] == 10  # its own bucket
    assert peek(w, "nobody")["limits"][0]["seconds_until_full"] == 0


@given(st.text(max_size=30))
def test_any_cost_header_is_a_positive_int_or_a_bad_request(value):
    try:
        cost = parse_cost(CIMultiDict([("X-Cost", value)]))
    except BadRequest:
        return
    assert type(cost) is int and 1 <= cost < 10**15 and str(cost) == value.lstrip("0")


@given(st.text(max_size=200))
def test_any_report_id_header_is_taken_as_it_is_or_a_bad_request(value):
    try:
        assert parse_report_id(CIMultiDict([("X-Report-ID", value)])) == value
    except BadRequest:
        pass


@pytest.mark.broker
def test_a_report_reaches_the_other_worker_as_fast_as_an_admission(pool):
    """The same path (own state, flush, update topic, peer feed): measured from the answer on
    one worker to the other worker's view showing it, polled every 5 ms, 5 of each, alternating.
    Printed (``-s``); the check is only that neither is far slower than the other."""
    import time

    # hold_share 0: an admission far from the limit would otherwise stay on its worker
    a, b = pool.start(2, capacity=1000, rate=0.001, hold_share=0)

    def seen_after(send, user: str) -> float:
        before = peek(b, user)["limits"][0]["tokens"]
        send()
        t0 = time.monotonic()
        wait_until(lambda: peek(b, user)["limits"][0]["tokens"] < before - 0.5, 10, 0.005, "replicated")
        return time.monotonic() - t0

    reports, admissions = [], []
    for i in range(5):
        reports.append(seen_after(lambda: post(a, "/report", "gus", cost=1, report_id=f"r{i}"), "gus"))
        admissions.append(seen_after(lambda: post(a, "/protected", "hal"), "hal"))
    reports.sort(), admissions.sort()
    print(f"\nreport -> other worker: median {reports[2] * 1000:.0f} ms (max {reports[-1] * 1000:.0f}); "
          f"admission: median {admissions[2] * 1000:.0f} ms (max {admissions[-1] * 1000:.0f})")
    assert reports[2] <= 3 * admissions[2] + 0.05
