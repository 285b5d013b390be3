"""The multi-node simulation: our CRDT holds the rate on one hot key, the seed's merge does not.

docs/design.md's setting: one hot key, requests round-robin over N nodes at
1000/s for 60 s, C = 10, R = 10/s, replication delay d. Each 60 s run is
60 001 requests and takes well under a second.
"""

from __future__ import annotations

import math
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketstream.simulation import SimResult, main, simulate

C, R, DURATION, REQUEST_RATE = 10.0, 10.0, 60.0, 1000.0


@cache
def run(merge: str, nodes: int, delay: float) -> SimResult:
    return simulate(merge, nodes, C, R, DURATION, REQUEST_RATE, delay)


def test_ours_stays_within_one_percent_of_the_ideal_at_five_nodes_and_100ms():
    r = run("ours", 5, 0.100)
    assert r.ideal == C + R * DURATION
    assert abs(r.ratio - 1) <= 0.01, r


def test_ours_stays_within_the_design_bound_at_every_instant_at_five_nodes_and_100ms():
    """admitted(0..t) ≤ C + R·t + (N-1)·(C + R·d) at every admission, so at every instant."""
    assert run("ours", 5, 0.100).max_excess_over_bound <= 0


def test_the_seeds_merge_over_admits_at_five_nodes():
    """The difference is real: the seed's min/max merge loses concurrent spending."""
    for delay in (0.010, 0.100):
        r = run("seed", 5, delay)
        assert r.ratio > 1.1, r
        assert r.max_excess_over_bound > 0, r  # beyond even the bound that allows N - 1 extra bursts


@pytest.mark.parametrize("merge", ["seed", "ours"])
def test_one_node_admits_exactly_the_classic_count(merge):
    """One node, nothing to merge: both admit C + R·t (110 in 10 s), and no more than C + R in any second."""
    r = simulate(merge, 1, C, R, 10.0, REQUEST_RATE, 0.1)
    assert r.admitted == C + R * 10.0
    assert r.worst_window <= C + R


def test_a_run_is_deterministic():
    a = simulate("ours", 3, C, R, 5.0, REQUEST_RATE, 0.05, flush_interval=0.005)
    b = simulate("ours", 3, C, R, 5.0, REQUEST_RATE, 0.05, flush_interval=0.005)
    assert a == b


def test_batching_sends_at_most_one_state_per_node_per_flush():
    r = simulate("ours", 3, C, R, 5.0, REQUEST_RATE, 0.05, flush_interval=0.1)
    assert r.messages <= 3 * (5.0 / 0.1 + 1)
    assert r.max_excess_over_bound <= 0


Scenarios = st.fixed_dictionaries(
    {
        "nodes": st.integers(1, 6),
        "capacity": st.sampled_from([1.0, 2.5, 10.0, 40.0]),
        "rate": st.sampled_from([0.5, 3.0, 10.0, 100.0]),
        "duration": st.sampled_from([1.0, 3.0, 10.0]),
        "request_rate": st.sampled_from([7.0, 100.0, 333.0, 1500.0]),
        "delay": st.sampled_from([0.0, 0.001, 0.02, 0.1, 0.5]),
        "flush_interval": st.sampled_from([0.0, 0.0, 0.005, 0.05]),
    }
)


@settings(max_examples=100, deadline=None)
@given(Scenarios)
def test_ours_stays_within_the_design_bound_in_random_scenarios(sc):
    """The bound (with d = delay + flush interval) holds at every instant, not just in docs/design.md's setting."""
    r = simulate("ours", **sc)
    assert r.max_excess_over_bound <= 0, (sc, r)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"merge": "max"}, "merge"),
        ({"nodes": 0}, "nodes"),
        ({"delay": -1.0}, "delay"),
        ({"request_rate": 0.0}, "request_rate"),
        ({"duration": math.inf}, "duration"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    args = {"merge": "ours", "nodes": 2, "duration": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        simulate(**args)


class _FakeWorkers:
    requests = admitted = ideal_admitted = 1
    ratio = records_per_request = max_excess_over_bound = 0.0


def test_main_prints_the_table(capsys, monkeypatch):
    """The table has a row per merge, N and d, with the ratio; runs are stubbed (the real ones are tested above)."""
    calls = []

    def fake(merge, nodes, capacity, rate, duration, request_rate, delay, **kw):
        calls.append((merge, nodes, delay))
        return SimResult(merge, nodes, delay, 610, 610.0, 1.0, -1.0, 20, 610)

    monkeypatch.setattr("bucketstream.simulation.simulate", fake)
    monkeypatch.setattr("bucketstream.simulation.simulate_workers", lambda *a, **kw: _FakeWorkers)
    main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith(("seed", "ours"))]
    assert len(rows) == 12
    table = {(m, n, d) for m in ("seed", "ours") for n in (1, 3, 5) for d in (0.01, 0.1)}
    assert set(calls) >= table
    assert "N = 3, 4, 5" in out and any(n == 4 for _, n, _ in calls)
