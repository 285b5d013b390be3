"""The bench's pooled percentile: several wrk runs' requests read as one distribution.

The runs here are made in Python with wrk's own percentile rule (``stats_percentile``:
the least latency whose cumulative count reaches ``round(p/100 * n + 0.5)``), so these are
claims about the pooling, not about wrk.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.loadgen import GRID, Run, pooled_percentile


def wrk_percentile(latencies: list[int], p: float, ordered: list[int] | None = None) -> int:
    ordered = ordered or sorted(latencies)
    rank = math.floor(p / 100 * len(ordered) + 0.5 + 0.5)  # wrk: round(p/100 * n + 0.5)
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def run_of(latencies: list[int]) -> Run:
    """A run as loadgen.wrk returns it with ``grid``, latencies in µs."""
    ms = 1e-3
    ordered = sorted(latencies)
    return Run(target="t", scenario="unique", offered=0.0, duration=60.0, requests=len(latencies), errors=0,
               non_2xx=0, p50_ms=wrk_percentile(latencies, 50) * ms, p90_ms=wrk_percentile(latencies, 90) * ms,
               p99_ms=wrk_percentile(latencies, 99) * ms, p999_ms=wrk_percentile(latencies, 99.9) * ms,
               max_ms=max(latencies) * ms, mean_ms=sum(latencies) / len(latencies) * ms,
               grid=[wrk_percentile(latencies, g, ordered) for g in GRID])


latencies = st.lists(st.integers(min_value=100, max_value=200_000), min_size=1, max_size=3_000)


@settings(max_examples=60, deadline=None)
@given(latencies)
def test_one_run_pooled_is_that_runs_own_p99(xs):
    run = run_of(xs)
    assert pooled_percentile([run], 99) == run.p99_ms


@settings(max_examples=60, deadline=None)
@given(st.lists(latencies, min_size=2, max_size=4))
def test_pooled_p99_is_never_below_the_exact_one_and_lies_between_the_runs_own(lists):
    runs = [run_of(xs) for xs in lists]
    pooled = pooled_percentile(runs, 99)
    exact = wrk_percentile([x for xs in lists for x in xs], 99) * 1e-3
    assert pooled >= exact - 1e-9
    assert min(r.p99_ms for r in runs) - 1e-9 <= pooled <= max(r.p99_ms for r in runs) + 1e-9


def test_pooled_p99_of_three_workers_is_within_a_grid_step_of_the_exact_one():
    # three workers, one of them slow and answering fewer requests: the worst worker's p99 (its
    # tail) is far above the pooled one, and each run counts by its requests
    import random

    rnd = random.Random(7)
    lists = [[int(rnd.expovariate(1 / mean)) + 100 for _ in range(n)]
             for mean, n in ((1_000, 60_000), (1_200, 60_000), (3_000, 8_000))]
    runs = [run_of(xs) for xs in lists]
    everything = [x for xs in lists for x in xs]
    pooled = pooled_percentile(runs, 99)
    assert wrk_percentile(everything, 99) * 1e-3 <= pooled <= wrk_percentile(everything, 99.02) * 1e-3
    assert pooled < 0.9 * max(r.p99_ms for r in runs)


def test_workers_with_the_same_latencies_pool_to_their_own_p99():
    # the runs' shares must add up exactly: in floats, 3 × (10,003 × 0.99) / 30,009 is an ulp short
    # of 0.99, which puts the pooled p99 one grid step above every worker's own
    xs = list(range(1_000, 11_003))
    runs = [run_of(xs) for _ in range(3)]
    assert pooled_percentile(runs, 99) == runs[0].p99_ms
    assert pooled_percentile(runs, 50) == runs[0].p50_ms
