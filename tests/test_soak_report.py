"""The soak's report tells a trend from one slow window, and the workers' costs from the machine's speed
(``bench.soak``), on windows made here."""

from __future__ import annotations

from bench import soak


def row(p99: float) -> dict:
    return {"rps": 1000.0, "p99_ms": p99, "p99_worst_ms": p99, "rss": [100], "cpu_us": 200.0}


def target(rows: list[dict], name: str) -> str:
    entry = {"workers": 1, "traffic": "skewed", "protocol": "http", "rows": rows, "drain_seconds": 0.1}
    return next(value for label, value, _ in soak.targets({"soak": [entry]}) if name in label)


def test_one_slow_last_window_misses_the_target_but_shows_no_trend():
    rows = [row(x) for x in (10, 11, 9, 12, 11, 11, 9, 12, 10, 33)]
    assert target(rows, "last/first window p99 ≤ 1.2") == "3.30"
    assert target(rows, "half's median window p99") == "1.00"


def test_a_p99_that_climbs_shows_in_the_halves():
    rows = [row(x) for x in range(1, 11)]
    assert soak.half_medians(rows, "p99_ms") == 8 / 3  # median of 6-10 over median of 1-5


def test_the_middle_window_of_an_odd_count_is_in_neither_half():
    assert soak.half_medians([row(1), row(100), row(2)], "p99_ms") == 2.0
    assert soak.half_medians([row(5)], "p99_ms") is None


def test_the_wait_for_a_core_stands_beside_the_p99_of_the_same_windows():
    rows = [dict(row(5), wait_ms_per_s=150.0), dict(row(6), wait_ms_per_s=90.0), dict(row(9), wait_ms_per_s=260.4)]
    assert target(rows, "wait for a core") == "260 / 150 ms/s"
    assert target([row(5), row(9)], "wait for a core") == "-"  # a run from before it was measured


def test_a_rise_in_cpu_per_request_that_the_yardstick_shares_is_the_machines():
    # the last window: 30 % more CPU per request, and the same Python work took 30 % more CPU too
    rows = [dict(row(5), cpu_us=100.0, yardstick_us=2000.0), dict(row(9), cpu_us=130.0, yardstick_us=2600.0)]
    assert target(rows, "CPU per request (no target") == "1.30"
    assert target(rows, "yardstick, the machine's CPU") == "1.30"
    assert target(rows, "CPU per request in yardstick units") == "1.00"
    # the workers' own cost grew: the yardstick did not move
    rows[1]["yardstick_us"] = 2000.0
    assert target(rows, "CPU per request in yardstick units") == "1.30"
    assert target([row(5), row(9)], "yardstick units") == "-"  # a run from before it was read
