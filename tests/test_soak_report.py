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


def control(p99s: list[float], servers: int | None = 1) -> dict:
    rows = [{"t": 60.0 * (i + 1), "rps": 1000.0, "saturated": False, "errors": 0, "p50_ms": 0.4, "p99_ms": p99,
             "cpu_us": 40.0, "wait_ms_per_s": 3.0, "steal_pct": 0.0, "yardstick_us": 2000.0}
            for i, p99 in enumerate(p99s)]
    entry = {"server": "bare aiohttp handler", "traffic": "unique", "window": 60.0, "max_rps": 3000.0,
             "offered": 1000.0, "rows": rows}
    return entry if servers is None else {**entry, "servers": servers}  # None: a run from before 2026-12-05 15:30


def test_each_worker_counts_control_run_is_reported_beside_the_workers_with_no_target():
    results = {"soak": [], "soak_controls": [control([2.0, 3.1, 2.2, 1.9, 2.6]), control([3.0, 2.0, 4.5], 3)]}
    rows = {label: (value, met) for label, value, met in soak.targets(results)}
    assert rows["soak control (bare aiohttp handler × 1, unique users): last/first window p99 (no target; the "
                "machine and the harness alone)"] == ("1.30", None)
    assert rows["soak control (bare aiohttp handler × 1, unique users): largest / smallest window p99 (no "
                "target)"] == ("1.63", None)  # 3.1 / 1.9
    assert rows["soak control (bare aiohttp handler × 3, unique users): last/first window p99 (no target; the "
                "machine and the harness alone)"] == ("1.50", None)
    assert rows["soak control (bare aiohttp handler × 3, unique users): largest / smallest window p99 (no "
                "target)"] == ("2.25", None)  # 4.5 / 2.0
    md = "\n".join(soak.markdown(results))
    assert "### Control: the bare aiohttp handler × 1" in md and "| 120 | 1,000 | 40 | 0.40 | 3.10 | 3 (0.0 %) |" in md
    assert "### Control: the bare aiohttp handler × 3" in md and "on the cores 3 workers share" in md
    assert "| 180 | 1,000 | 40 | 0.40 | 4.50 | 3 (0.0 %) |" in md


def test_a_report_from_before_the_controls_per_worker_count_still_reads_its_one_control():
    results = {"soak": [], "soak_control": control([2.0, 2.6], None)}
    rows = {label: value for label, value, _ in soak.targets(results)}
    assert rows["soak control (bare aiohttp handler × 1, unique users): last/first window p99 (no target; the "
                "machine and the harness alone)"] == "1.30"
    assert "p99: wrk's own for the window" in "\n".join(soak.markdown(results))


def test_a_soak_without_its_control_run_reports_none():
    entry = {"workers": 1, "traffic": "unique", "protocol": "http", "rows": [row(5), row(6)], "drain_seconds": 0.1}
    assert not any("control" in label for label, _, _ in soak.targets({"soak": [entry]}))
    assert soak.markdown({"soak": []}) == []  # a run of other phases: no soak section at all


def test_each_run_says_how_far_its_windows_p99_moved_as_the_control_does():
    rows = [row(x) for x in (4.0, 2.5, 5.0, 3.0)]
    assert target(rows, "largest / smallest window p99") == "2.00"
