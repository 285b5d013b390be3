"""The soak through RLS reads ghz's report as the soak reads wrk's runs.

ghz's JSON reports are made here in Python (its fields: ``count``, ``total`` in ns,
``statusCodeDistribution``, ``details`` with each call's latency in ns and error), so these
are claims about ``bench.grpcload``'s reading of them, not about ghz.
"""

from __future__ import annotations

import collections
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import grpcload
from bench.loadgen import pooled_percentile


def report(latencies_us: list[int], statuses: list[str], errors: list[str] | None = None) -> dict:
    """A ghz report of calls with these latencies, statuses and error messages ("" for OK)."""
    errors = errors or [""] * len(statuses)
    details = [{"latency": us * 1000, "status": s, "error": e} for us, s, e in zip(latencies_us, statuses, errors)]
    return {"count": len(details), "total": 60 * 10**9, "statusCodeDistribution": dict(collections.Counter(statuses)),
            "errorDistribution": dict(collections.Counter(e for e in errors if e)), "details": details}


def exact(latencies_us: list[int], p: float) -> int:
    """The p-th percentile by nearest rank, in µs: the least latency at or under which p % of them are."""
    ordered = sorted(latencies_us)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def us(ms: float) -> int:
    return round(ms * 1e3)


latencies = st.lists(st.integers(min_value=100, max_value=200_000), min_size=1, max_size=3_000)


@settings(max_examples=60, deadline=None)
@given(latencies, st.sampled_from([50.0, 90.0, 99.0, 99.9]))
def test_a_window_through_rls_pools_to_the_exact_percentile_of_its_calls(xs, p):
    run = grpcload.soak_result(report(xs, ["OK"] * len(xs)), "unique", 100.0)
    assert us(pooled_percentile([run], p)) == exact(xs, p)
    assert us(run.p99_ms) == exact(xs, 99) and us(run.max_ms) == max(xs)


def test_calls_ghz_cut_off_at_the_end_are_neither_answered_nor_errors():
    # ghz closes its connections when a timed run ends: the calls in flight end on the client, as
    # measured against a real worker; the worker's own UNAVAILABLE is an error
    ends = [("Canceled", "rpc error: code = Canceled desc = grpc: the client connection is closing"),
            ("Unavailable", "rpc error: code = Unavailable desc = transport is closing"),
            ("Unavailable", "rpc error: code = Unavailable desc = the worker is not ready yet")]
    run = grpcload.soak_result(report([500] * 97 + [900, 40_000, 70_000], ["OK"] * 97 + [s for s, _ in ends],
                                      [""] * 97 + [e for _, e in ends]), "unique", 100.0)
    assert run.requests == 98 and run.errors == 1
    # no call that did not end OK counts in the latencies
    assert us(run.max_ms) == 500 and us(pooled_percentile([run], 99.9)) == 500


def test_the_rls_skewed_mix_is_the_wrk_scripts_draw():
    # bench.loadgen: user floor(1e6 ** u), so user 1 has probability ln 2 / ln 1e6 (5.0 %), users 1-10 ln 11 / ln 1e6
    messages = grpcload.skewed_messages("h", 40_000, seed=7)
    users = [m["descriptors"][0]["entries"][0]["value"] for m in messages]
    assert all(m["domain"] == "bucketstream" and m["descriptors"][0]["entries"][0]["key"] == "user" for m in messages)
    counts = collections.Counter(users)
    assert abs(counts["h1"] / len(users) - math.log(2) / math.log(1e6)) < 0.005
    top10 = sum(counts[f"h{n}"] for n in range(1, 11))
    assert abs(top10 / len(users) - math.log(11) / math.log(1e6)) < 0.01
    # seeded: the same seed draws the same users, another seed others
    assert grpcload.skewed_messages("h", 1_000, seed=7) == messages[:1_000]
    assert grpcload.skewed_messages("h", 1_000, seed=8) != messages[:1_000]
