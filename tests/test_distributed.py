"""Three real workers on the real broker: local decisions, one limit, nothing lost.

Load is paced (a fixed request rate, round-robin over the workers), counted at
the client, and checked against the bound of docs/design.md:
    admitted(0, t] <= C + R*t + (N-1)*(C + R*d)
with d stated by the test (the 100 ms target plus a flush interval,
``tests/helpers.stated_delay``), not measured from the workers under test, and
against the floor admitted >= 0.95 * (C + R*t): nobody is locked out. "The
table counts every 200" is read from the table's changelog topic in Kafka, not
from a worker's view (which the peer feed fills without the merge agent).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.cluster import wait_until
from tests.helpers import (C, R, Load, bucket_key, changelog_topic, check_bound, measured_delay, read_topic,
                           stated_delay, table_consumed)

pytestmark = pytest.mark.broker


def test_one_limit_across_three_workers_and_they_converge(pool):
    """(1) a hot key at 10x its rate, round-robin over three workers for 20 s stays
    within the bound and near the ideal; (2) afterwards all three agree within 1 s."""
    workers = pool.start(3, capacity=C, rate=R)
    result = Load(workers, "hot", rate=10 * R, duration=20).run()
    p50, p99 = measured_delay(workers)
    print(f"\nadmitted {result.admitted} of {result.admitted + result.refused}, ideal {C + R * result.duration:.0f}, "
          f"ratio {result.admitted / (C + R * result.duration):.3f}, by worker {result.by_worker}, "
          f"delay p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms")
    assert result.errors == 0
    check_bound(result, 3, stated_delay())
    # the target (p99 <= 100 ms) is measured by `make bench`; this only guards
    # against the 1.5 s fetch parking that Faust's defaults caused
    assert p99 < 1.0, f"replication delay p99 {p99 * 1000:.0f} ms"

    stop = time.time()

    def agree():
        views = [w.bucket("hot") for w in workers]
        states = {(json.dumps(v["counters"], sort_keys=True), v["wasted"]) for v in views}
        return len(states) == 1 and all(not v["own_unreflected"] for v in views) and views
    views = wait_until(agree, 5, 0.02, "all workers hold the same state")
    converged = time.time() - stop
    assert converged <= 1.0, f"took {converged:.2f}s to agree"
    assert views[0]["consumed"] == result.admitted  # every worker's view counts every 200


def test_a_replica_worker_decides_locally_for_a_key_another_worker_owns(pool):
    """(5) B holds key k only as a standby replica; with the owner frozen (SIGSTOP)
    B still answers at once, from state that includes the owner's consumption.
    hold_share 0: every admission published (held back or deferred, A's 4th would reach B
    only after ``hold_defer_seconds`` whenever a flush fell between its 3rd and 4th)."""
    a, b = pool.start(2, capacity=C, rate=0.01, hold_share=0)
    key = next(k for k in (f"user-{i}" for i in range(1000)) if b.bucket(k)["role"] == "standby")
    assert a.bucket(key)["role"] == "active"
    assert [a.protected(key)[0] for _ in range(4)] == [200] * 4
    wait_until(lambda: b.bucket(key)["replica_consumed"] == 4, 10, 0.02, "B's replica shows A's 4")
    a.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        answers = [b.protected(key) for _ in range(C)]
        elapsed = time.monotonic() - t0
    finally:
        a.signal(signal.SIGCONT)
    assert [s for s, _, _ in answers] == [200] * (C - 4) + [429] * 4
    assert answers[0][2]["remaining"] == C - 5
    assert elapsed < 2.0  # no waiting on the frozen owner


def test_kill9_a_worker_mid_load_and_restart_it(pool, broker):
    """(3) kill -9 of one worker during the load, restart: the run still meets the bound,
    and the table (its changelog in Kafka) counts every 200 the clients got."""
    workers = pool.start(3, capacity=C, rate=R)
    with Load(workers, "victim", rate=10 * R, duration=20) as load:
        time.sleep(6)
        workers[1].kill9()
        time.sleep(2)
        workers[1].start()
        workers[1].wait_ready(60)
    result = load.result
    p50, p99 = measured_delay(workers)
    print(f"\nkill -9: admitted {result.admitted}, ideal {C + R * result.duration:.0f}, errors {result.errors}, "
          f"delay p99 {p99 * 1000:.1f} ms (bound checked with d = {stated_delay() * 1000:.0f} ms)")
    check_bound(result, 3, stated_delay())
    # the dead process's partitions are merged again once the group has dropped it (10 s session timeout)
    key = bucket_key(workers[0], "victim")
    wait_until(lambda: table_consumed(broker, pool.app_id, key) == result.admitted, 30, 0.2,
               "the table (its changelog in Kafka) counts every 200 the clients got")


def test_broker_outage_workers_keep_answering_and_nothing_is_lost(pool, broker):
    """(4) the broker stops for 10 s during the load: every worker keeps answering from
    local state; once it is back, the table's merged consumption equals the 200s.
    The load lasts until 5 s after the broker is back, however long its controlled
    shutdown takes (kafka.sh waits up to 15 s before it kills it)."""
    workers = pool.start(3, capacity=C, rate=R)
    with Load(workers, "outage", rate=10 * R, duration=120) as load:
        time.sleep(5)
        t0 = time.monotonic()
        broker.stop()
        stopping = time.monotonic() - t0
        down_at = load.result.admitted + load.result.refused + load.result.errors
        time.sleep(10)
        answered_while_down = load.result.admitted + load.result.refused - down_at
        broker.start()
        time.sleep(5)
        load.finish()
    result = load.result
    print(f"\noutage: admitted {result.admitted}, refused {result.refused}, errors {result.errors}, "
          f"answered while down {answered_while_down}, the broker's shutdown took {stopping:.1f} s")
    assert result.errors == 0
    assert answered_while_down >= 0.9 * 10 * 10 * R  # ~10 s at 10xR: all answered
    key = bucket_key(workers[0], "outage")
    wait_until(lambda: table_consumed(broker, pool.app_id, key) == result.admitted, 90, 0.5,
               "the table (its changelog in Kafka) counts every 200 the clients got")


def test_idle_buckets_expire_and_the_table_shrinks(pool, broker):
    """(6) many distinct users, then idle: their full buckets are deleted (tombstones
    in the compacted changelog), and the workers hold no keys any more. Every admission is
    published (hold_share 0): a user of one request would otherwise never reach the table."""
    # a pass over the partitions spans two runs (floor(2 s / 8 / 0.125 s)): keys of every slice go
    workers = pool.start(2, capacity=2, rate=1, expire_after=2, expire_check_interval=0.125, hold_share=0)
    users = [f"u{i}" for i in range(300)]
    for i, u in enumerate(users):
        assert workers[i % 2].protected(u)[0] == 200

    def held():
        return sum(json.loads(w.request("GET", "/stats")[2])["active_keys"] for w in workers)
    wait_until(lambda: held() == 0, 60, 0.2, "idle buckets expired")
    history = read_topic(broker, changelog_topic(pool.app_id))
    assert {k.decode().split("|", 2)[2] for k in history} == set(users)  # each was in the table ...
    assert all(v is None for v in history.values())  # ... and is a tombstone now
    # a deleted bucket is a full bucket again
    assert workers[0].bucket("u7")["tokens"] == 2


def _sweep_counters(w) -> tuple[float, float]:
    """(runs of the expiry sweep, table keys it read), from one /metrics answer."""
    found = dict(line.split(" ", 1) for line in w.request("GET", "/metrics")[2].decode().splitlines()
                 if line.startswith(("bucketstream_expiry_sweeps_total ", "bucketstream_expiry_keys_read_total ")))
    return float(found["bucketstream_expiry_sweeps_total"]), float(found["bucketstream_expiry_keys_read_total"])


def test_the_expiry_sweep_reads_each_key_once_per_pass_not_at_every_run(pool):
    """A pass over the active partitions spans k runs (Worker.sweep_period: floor(8 s / 8 /
    0.25 s) = 4), a slice of the partitions each: over any stretch of runs, each key is read
    runs / k times, rounded down or up, where a sweep of every key at every run read it 4x
    as often (and h / interval = 60 times per horizon with the defaults). No key goes stale
    here (C / R = 10,000 s), so the table holds the same keys throughout."""
    (w,) = pool.start(1, capacity=100, rate=0.01, expire_after=8, expire_check_interval=0.25, hold_share=0)
    keys = 200
    for i in range(keys):
        assert w.protected(f"s{i}")[0] == 200
    wait_until(lambda: json.loads(w.request("GET", "/stats")[2])["active_keys"] == keys, 30, 0.1,
               "every user in the table")
    runs0, read0 = _sweep_counters(w)
    runs1, read1 = wait_until(lambda: (c := _sweep_counters(w))[0] >= runs0 + 24 and c, 60, 0.1, "24 runs")
    runs, read = runs1 - runs0, read1 - read0
    print(f"\n{runs:.0f} runs read {read:.0f} keys of {keys}: {read / keys:.2f} reads per key")
    assert keys * (runs // 4) <= read <= keys * -(-runs // 4)
