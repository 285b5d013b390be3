"""The load test checks answers: a 429 is correct, a wrong body or header is a failure with a reason.

Locust runs in subprocesses only: importing it monkey-patches the whole
process with gevent, which the rest of the suite must not get.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.cluster import ROOT

LOCUSTFILE = ROOT / "locustfile.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                reason="locust is not installed (pip install -e '.[load]'; `make test` has it)")

GOOD_HEADERS = {"RateLimit-Policy": '"default";q=10;w=10', "RateLimit": '"default";r=3;t=7'}
GOOD = {"allowed": True, "remaining": 3, "limit": 10, "reset": 7, "policy": "default"}
REFUSED = {**GOOD, "allowed": False, "remaining": 0, "reset": 10, "retry_after": 1}
REFUSED_HEADERS = {**GOOD_HEADERS, "RateLimit": '"default";r=0;t=10', "Retry-After": "1"}

#: (status, headers, body, what the reason must say; None: a correct answer)
ANSWERS = [
    (200, GOOD_HEADERS, GOOD, None),
    (429, REFUSED_HEADERS, REFUSED, None),
    (200, GOOD_HEADERS, {**GOOD, "shadow": "would refuse"}, None),
    (429, {k: v for k, v in REFUSED_HEADERS.items() if k != "Retry-After"}, REFUSED, "429 without a Retry-After"),
    (429, {**REFUSED_HEADERS, "Retry-After": "0"}, REFUSED, "Retry-After '0', not an integer >= 1"),
    (429, {**REFUSED_HEADERS, "Retry-After": "1.5"}, REFUSED, "not an integer >= 1"),
    (200, {"RateLimit": GOOD_HEADERS["RateLimit"]}, GOOD, "without a RateLimit-Policy header"),
    (200, {"RateLimit-Policy": GOOD_HEADERS["RateLimit-Policy"]}, GOOD, "without a RateLimit header"),
    (200, {**GOOD_HEADERS, "RateLimit": '"default";r=4;t=7'}, GOOD, "RateLimit r=4 but body remaining 3"),
    (200, {**GOOD_HEADERS, "RateLimit": '"default";t=7'}, GOOD, "no r= parameter"),
    (200, {**GOOD_HEADERS, "RateLimit": 'r=3;t=7'}, GOOD, "not one item"),
    (200, {**GOOD_HEADERS, "RateLimit-Policy": '"default";q=12;w=10'}, GOOD, "q=12 but body limit 10"),
    (200, {**GOOD_HEADERS, "RateLimit": '"gold/search";t=7;r=3;pk=:abc=:'}, GOOD, None),  # order, extra params
    (200, GOOD_HEADERS, {k: v for k, v in GOOD.items() if k != "reset"}, "body has no 'reset'"),
    (200, GOOD_HEADERS, {**GOOD, "remaining": "3"}, "'remaining' is '3', not an int >= 0"),
    (200, GOOD_HEADERS, {**GOOD, "allowed": 1}, "'allowed' is 1, not a boolean"),
    (200, GOOD_HEADERS, {**GOOD, "allowed": False}, "200 with allowed=False"),
    (200, GOOD_HEADERS, "<html>", "body is not JSON"),
    (503, {"Retry-After": "1"}, {"error": "tables are recovering"}, "unexpected status 503"),
    (404, {}, {"error": "no rule for resource 'export'"}, "unexpected status 404"),
]


def test_answer_checks_accept_correct_answers_and_name_what_is_wrong():
    """The validator the Locust users apply to every answer, on hand-made answers."""
    cases = [(s, h, b if isinstance(b, str) else json.dumps(b)) for s, h, b, _ in ANSWERS]
    script = ("import json, sys, locustfile\n"
              "print(json.dumps([locustfile.problem(s, h, b) for s, h, b in json.load(sys.stdin)]))")
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(cases), capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reasons = json.loads(proc.stdout.splitlines()[-1])
    for (status, _, _, expected), reason in zip(ANSWERS, reasons, strict=True):
        if expected is None:
            assert reason is None, (status, reason)
        else:
            assert reason is not None and expected in reason, (status, expected, reason)


def html_stats(path) -> dict:
    """The final request statistics that Locust embeds in its HTML report."""
    line = next(ln for ln in path.read_text().splitlines() if "window.templateArgs = " in ln)
    args, _ = json.JSONDecoder().raw_decode(line.split("window.templateArgs = ", 1)[1].strip())
    return {r["name"]: r for r in args["requests_statistics"]}


def refused(worker) -> float:
    _, _, body = worker.request("GET", "/metrics")
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.decode().splitlines()
               if ln.startswith("bucketstream_decisions_total{") and 'outcome="refused"' in ln)


@pytest.mark.broker
def test_ten_second_headless_run_against_two_workers_has_zero_failures(pool, tmp_path):
    """The mix (hot callers, long tail, weighted callers with reports, /protected and three
    resources) spread over two workers: every answer checks out, and the hot callers did get 429s."""
    workers = pool.start(2, capacity=10, rate=1)
    hosts = [f"http://127.0.0.1:{w.port}" for w in workers]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETSTREAM_")}
    env |= {"BUCKETSTREAM_LOAD_HOSTS": ",".join(hosts), "BUCKETSTREAM_LOAD_RESOURCES": "search,upload,export"}
    out = tmp_path / "locust"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "20", "-r", "10", "-t", "10s",
         "--host", hosts[0], "--csv", str(out), "--html", f"{out}.html", "--only-summary"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=50)
    report = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report  # Locust exits 1 if any request failed

    with open(f"{out}_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, report
    assert {"/protected", "/protected/search", "/protected/upload", "/protected/export",
            "/protected (X-Cost)", "/report"} <= set(rows), report

    # the CSV can miss the last second (Locust writes it periodically); the HTML report is final
    final = html_stats(tmp_path / "locust.html")["Aggregated"]
    assert final["num_requests"] >= int(total["Request Count"]) and final["num_failures"] == 0, report

    assert all(refused(w) > 0 for w in workers), "every worker refused someone, and that was no failure"


REPORTS = [
    (200, {"charged": 3, "duplicate": False, "tokens": -1.5, "remaining": 0}, 3, False, None),
    (200, {"charged": 3, "duplicate": True, "tokens": 2.0, "remaining": 2}, 3, None, None),
    (200, {"charged": 3, "duplicate": False, "tokens": 2.0, "remaining": 2}, 3, True, "duplicate=False, expected True"),
    (200, {"charged": 2, "duplicate": False, "tokens": 2.0, "remaining": 2}, 3, None, "charged=3"),
    (200, {"charged": 3, "duplicate": False}, 3, None, "without tokens/remaining"),
    (409, {"error": "report 'x' was already charged 2 tokens, not 3"}, 3, None, "report answered 409"),
    (200, "<html>", 3, None, "not JSON"),
]


def test_report_checks_accept_correct_answers_and_name_what_is_wrong():
    """The validator the weighted Locust users apply to ``POST /report`` answers."""
    cases = [(s, b if isinstance(b, str) else json.dumps(b), c, d) for s, b, c, d, _ in REPORTS]
    script = ("import json, sys, locustfile\n"
              "print(json.dumps([locustfile.report_problem(*case) for case in json.load(sys.stdin)]))")
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(cases), capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reasons = json.loads(proc.stdout.splitlines()[-1])
    for (*_, expected), reason in zip(REPORTS, reasons, strict=True):
        if expected is None:
            assert reason is None, reason
        else:
            assert reason is not None and expected in reason, (expected, reason)
