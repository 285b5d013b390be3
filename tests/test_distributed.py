"""Three real workers on the real broker: local decisions, one limit, nothing lost.

Load is paced (a fixed request rate, round-robin over the workers), counted at
the client, and checked against the bound of docs/design.md:
    admitted(0, t] <= C + R*t + (N-1)*(C + R*d)
with d the replication delay the workers measured during the run, and
against the floor admitted >= 0.95 * (C + R*t): nobody is locked out.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.cluster import Worker, wait_until

pytestmark = pytest.mark.broker

C, R = 10, 5.0  # capacity 10 tokens, 5 tokens/s


@dataclass
class LoadResult:
    start: float
    end: float
    admitted: int = 0
    refused: int = 0
    errors: int = 0
    by_worker: dict = field(default_factory=dict)
    admit_times: list = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.end - self.start


class Load:
    """Paced round-robin POSTs for one key over a list of workers, in a thread."""

    def __init__(self, workers: list[Worker], key: str, rate: float, duration: float):
        self.workers, self.key, self.rate, self.duration = workers, key, rate, duration
        self.result = LoadResult(0.0, 0.0)
        self._conns: dict[int, http.client.HTTPConnection] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _post(self, w: Worker) -> int | None:
        for attempt in range(2):
            conn = self._conns.get(w.port)
            if conn is None:
                conn = self._conns[w.port] = http.client.HTTPConnection("127.0.0.1", w.port, timeout=2)
            try:
                conn.request("POST", "/protected", headers={"X-User-ID": self.key})
                resp = conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self._conns.pop(w.port, None)
        return None

    def _run(self) -> None:
        r = self.result
        r.start = time.time()
        interval = 1.0 / self.rate
        i = 0
        while True:
            due = r.start + i * interval
            if due - r.start >= self.duration:
                break
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            w = self.workers[i % len(self.workers)]
            status = self._post(w)
            if status == 200:
                r.admitted += 1
                r.admit_times.append(time.time() - r.start)
                r.by_worker[w.port] = r.by_worker.get(w.port, 0) + 1
            elif status == 429:
                r.refused += 1
            else:
                r.errors += 1
            i += 1
        r.end = time.time()
        for conn in self._conns.values():
            conn.close()

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join()

    def run(self) -> LoadResult:
        """Run the whole load in the foreground."""
        self._run()
        return self.result


def measured_delay(workers: list[Worker]) -> tuple[float, float]:
    """(p50, p99) of replication delay over the workers that measured any."""
    stats = [w.request("GET", "/stats")[2] for w in workers if w.alive]
    delays = [json.loads(s)["replication_delay"] for s in stats]
    p50 = max((d["p50"] or 0.0) for d in delays)
    p99 = max((d["p99"] or 0.0) for d in delays)
    return p50, p99


def check_bound(result: LoadResult, n: int, d: float) -> None:
    """Every prefix (0, t] of the admissions stays under the bound; the total reaches 95 % of ideal."""
    for k, t in enumerate(result.admit_times, start=1):
        bound = C + R * t + (n - 1) * (C + R * d)
        assert k <= bound, f"{k} admitted by t={t:.2f}s, bound {bound:.1f} (d={d * 1000:.0f} ms)"
    ideal = C + R * result.duration
    assert result.admitted >= 0.95 * ideal, f"admitted {result.admitted} < 95% of ideal {ideal:.0f}: locked out"


def table_consumed(workers: list[Worker], key: str) -> set[int]:
    return {w.bucket(key)["replica_consumed"] for w in workers if w.alive}


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
    check_bound(result, 3, p99)
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
    assert views[0]["consumed"] == result.admitted  # the merged state counts every 200


def test_a_replica_worker_decides_locally_for_a_key_another_worker_owns(pool):
    """(5) B holds key k only as a standby replica; with the owner frozen (SIGSTOP)
    B still answers at once, from state that includes the owner's consumption."""
    a, b = pool.start(2, capacity=C, rate=0.01)
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


def test_kill9_a_worker_mid_load_and_restart_it(pool):
    """(3) kill -9 of one worker during the load, restart: the run still meets the bound."""
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
          f"delay p99 {p99 * 1000:.1f} ms")
    check_bound(result, 3, p99)
    wait_until(lambda: table_consumed(workers, "victim") == {result.admitted}, 10, 0.05,
               "the table counts every 200 the clients got")


def test_broker_outage_workers_keep_answering_and_nothing_is_lost(pool, broker):
    """(4) the broker stops for 10 s during the load: every worker keeps answering from
    local state; once it is back, the table's merged consumption equals the 200s."""
    workers = pool.start(3, capacity=C, rate=R)
    with Load(workers, "outage", rate=10 * R, duration=22) as load:
        time.sleep(5)
        broker.stop()
        down_at = load.result.admitted + load.result.refused + load.result.errors
        time.sleep(10)
        answered_while_down = load.result.admitted + load.result.refused - down_at
        broker.start()
    result = load.result
    print(f"\noutage: admitted {result.admitted}, refused {result.refused}, errors {result.errors}, "
          f"answered while down {answered_while_down}")
    assert result.errors == 0
    assert answered_while_down >= 0.9 * 10 * 10 * R  # ~10 s at 10xR: all answered
    wait_until(lambda: table_consumed(workers, "outage") == {result.admitted}, 90, 0.2,
               "the table counts every 200 the clients got")


def test_idle_buckets_expire_and_the_table_shrinks(pool, broker):
    """(6) many distinct users, then idle: their full buckets are deleted (tombstones
    in the compacted changelog), and the workers hold no keys any more."""
    from tests.test_worker import read_changelog

    workers = pool.start(2, capacity=2, rate=1, expire_after=1, expire_check_interval=0.5)
    users = [f"u{i}" for i in range(300)]
    for i, u in enumerate(users):
        assert workers[i % 2].protected(u)[0] == 200

    def held():
        return sum(json.loads(w.request("GET", "/stats")[2])["active_keys"] for w in workers)
    wait_until(lambda: held() == 0, 60, 0.2, "idle buckets expired")
    history = read_changelog(broker, f"{pool.app_id}-buckets-changelog")
    assert {k.decode().split("|", 2)[2] for k in history} == set(users)  # each was in the table ...
    assert all(v is None for v in history.values())  # ... and is a tombstone now
    # a deleted bucket is a full bucket again
    assert workers[0].bucket("u7")["tokens"] == 2
