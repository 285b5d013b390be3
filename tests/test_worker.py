"""One real worker on the real broker: the request path end to end, restart, start-up errors."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time

import pytest

from bucketstream import crdt, spill
from tests.cluster import wait_until
from tests.helpers import bucket_key, changelog_topic, read_topic, table_consumed

pytestmark = pytest.mark.broker


def test_ten_requests_pass_then_429(pool):
    """The README's curl loop: capacity 10, so ten 200s, then 429s with Retry-After."""
    (w,) = pool.start(1, capacity=10, rate=1)
    codes = [w.protected("alice")[0] for _ in range(12)]
    assert codes == [200] * 10 + [429] * 2
    status, headers, body = w.protected("alice")
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert body["allowed"] is False and body["limit"] == 10


def test_consumption_reaches_the_table_through_the_update_topic(pool, broker):
    """A 200 on /protected becomes a delta on the update topic, the agent joins it
    into the table, and the compacted changelog in Kafka holds the merged state.
    hold_share 0: every admission published (else the 4th waits ``hold_defer_seconds``
    whenever a flush falls between the 3rd and the 4th)."""
    (w,) = pool.start(1, capacity=10, rate=0.01, hold_share=0)
    assert [w.protected("bob")[0] for _ in range(4)] == [200] * 4
    key = w.bucket("bob")["key"].encode()  # <rule version>||bob

    def flushed_four():
        value = read_topic(broker, f"{pool.app_id}-updates").get(key)
        return value is not None and crdt.decode(value).consumed == 4

    wait_until(flushed_four, 10, 0.1, "the update topic holds bob's state with 4 consumed")

    def table_has_four():
        value = read_topic(broker, changelog_topic(pool.app_id)).get(key)
        return value is not None and crdt.decode(value).consumed == 4

    wait_until(table_has_four, 20, 0.2, "changelog shows 4 tokens consumed by bob")
    view = wait_until(lambda: (b := w.bucket("bob"))["replica_consumed"] == 4 and b, 10, 0.05, "replica shows 4")
    assert view["own_unreflected"] is False
    assert view["tokens"] == pytest.approx(6, abs=0.1)


def test_restarted_worker_recovers_consumption_and_takes_a_fresh_slot(pool):
    """After a restart the table is recovered from the changelog before serving,
    and the new process consumes under a new CRDT slot (never from zero)."""
    (w,) = pool.start(1, capacity=5, rate=0.01)
    assert [w.protected("carol")[0] for _ in range(5)] == [200] * 5
    wait_until(lambda: w.bucket("carol")["replica_consumed"] == 5, 20, 0.05, "replica shows 5")
    slot_before = w.bucket("carol")["slot"]
    pool.restart(w).wait_ready()
    assert w.protected("carol")[0] == 429
    after = w.bucket("carol")
    assert after["slot"] != slot_before and after["consumed"] == 5


def test_a_worker_stopped_right_after_admitting_loses_none_of_it(pool):
    """SIGTERM straight after the last 200 (no wait for a flush or a merge): the
    stopping worker publishes what it admitted since its last flush, so the next
    process (fresh slot, no memory) finds all of it and refuses the next request.
    A 5 s flush interval leaves everything to that last flush."""
    (w,) = pool.start(1, capacity=40, rate=0.01, flush_interval=5)
    assert [w.protected(f"user-{i % 4}")[0] for i in range(160)] == [200] * 160
    pool.restart(w).wait_ready()
    for i in range(4):
        bucket = w.bucket(f"user-{i}")
        assert bucket["consumed"] == 40, bucket
        assert w.protected(f"user-{i}")[0] == 429


def test_a_worker_stopped_while_kafka_is_away_keeps_its_admissions_for_the_next_start(pool, broker):
    """The broker is down, the worker admits from local state and is stopped: it cannot
    publish, so it keeps those states in its data directory; the next process on that
    directory publishes them before it serves, and the table counts every 200."""
    (w,) = pool.start(1, capacity=40, rate=0.01)
    path = spill.path_in(w.data_dir)
    try:
        broker.stop()
        assert [w.protected("offline")[0] for _ in range(25)] == [200] * 25
        t0 = time.monotonic()
        w.stop(timeout=60)
        print(f"\nstopped with the broker away in {time.monotonic() - t0:.1f} s")
        assert w.proc.returncode == 0, w.log_tail()
        kept = spill.read(path)
        assert [crdt.decode(raw).consumed for raw in kept.values()] == [25], kept
    finally:
        broker.start()
    w.start().wait_ready()
    assert not path.exists(), "published, so deleted"
    bucket = w.bucket("offline")
    assert bucket["consumed"] == 25, bucket  # in the view before it served
    key = bucket_key(w, "offline")
    wait_until(lambda: table_consumed(broker, pool.app_id, key) == 25, 20, 0.2,
               "the table (its changelog in Kafka) merged them")
    assert [w.protected("offline")[0] for _ in range(16)] == [200] * 15 + [429]


def test_a_damaged_spill_file_stops_the_start_naming_it(broker, tmp_path):
    spill.path_in(tmp_path).write_bytes(b"BSSPILL1 and then garbage")
    proc = subprocess.run([sys.executable, "-m", "bucketstream.cli", "worker", "--broker", broker.url,
                           "--app-id", "damaged-spill", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert str(spill.path_in(tmp_path)) in proc.stderr and "move it away" in proc.stderr, proc.stderr


def test_bad_configuration_fails_at_start_naming_the_variable(tmp_path):
    """No broker needed: validation happens before anything connects."""
    proc = subprocess.run([sys.executable, "-m", "bucketstream.cli", "worker", "--capacity", "-3",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "BUCKETSTREAM_CAPACITY" in proc.stderr and "-3" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bucketstream.cli", "worker", "--broker", "localhost:9092",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "BUCKETSTREAM_BROKER" in proc.stderr


def test_help_describes_every_worker_option():
    out = subprocess.run([sys.executable, "-m", "bucketstream.cli", "worker", "--help"],
                         capture_output=True, text=True, timeout=60).stdout
    for option in ["--web-port", "--broker", "--data-dir", "--node-id", "--capacity", "--rate",
                   "BUCKETSTREAM_BROKER", "BUCKETSTREAM_CAPACITY", "BUCKETSTREAM_RATE"]:
        assert option in out
    top = subprocess.run([sys.executable, "-m", "bucketstream.cli", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "worker" in top


def test_more_replicas_than_brokers_fails_at_start_naming_the_variable(broker, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bucketstream.cli", "worker", "--broker", broker.url,
                           "--topic-replication", "3", "--app-id", "too-many-replicas",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "BUCKETSTREAM_TOPIC_REPLICATION is 3" in proc.stderr and "1 broker" in proc.stderr


def _heap_trims(w) -> float:
    _, _, body = w.request("GET", "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("bucketstream_heap_trims_total{"))


def test_a_worker_gives_the_allocators_free_memory_back_on_its_timer(pool):
    """glibc's malloc_trim on BUCKETSTREAM_HEAP_TRIM_INTERVAL (bucketstream.heap), counted; never with 0.
    What it is for, the RSS it keeps from creeping, is measured by the soak (docs/performance.md)."""
    (trimming,) = pool.start(1, heap_trim_interval=0.2)
    wait_until(lambda: _heap_trims(trimming) >= 3, timeout=30, what="three heap trims")
    (off,) = pool.start(1, heap_trim_interval=0)
    # the first worker's trims go on meanwhile: the second has had as long for its own
    before = _heap_trims(trimming)
    wait_until(lambda: _heap_trims(trimming) >= before + 3, timeout=30, what="three more heap trims")
    assert _heap_trims(off) == 0


def _metric(w, name: str) -> float:
    _, _, body = w.request("GET", "/metrics", w.admin)
    return next(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines() if line.startswith(name + " "))


def _new_users(w, n: int, prefix: str) -> None:
    """``n`` users seen once, on one kept-alive connection (a connection per request would
    leave the worker objects of its own to collect)."""
    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=5)
    try:
        for i in range(n):
            conn.request("POST", "/protected", headers={"X-User-ID": f"{prefix}{i}"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()


def test_new_users_set_off_a_young_collector_pass_only_past_the_threshold_the_worker_is_given(pool):
    """BUCKETSTREAM_GC_YOUNG_THRESHOLD reaches Python's collector when the worker becomes ready (0:
    Python's own 700). Each new user leaves two or three container objects behind until its allowance
    refills (20 s here): 2,000 of them set off no young pass under the default 10,000, where Python's
    700 set off one every few hundred users (what the setting is for: docs/performance-journal.md)."""
    default, own = pool.start(1, capacity=10, rate=1) + pool.start(1, capacity=10, rate=1, gc_young_threshold=0)
    assert _metric(default, "bucketstream_gc_young_threshold") == 10_000
    assert _metric(own, "bucketstream_gc_young_threshold") == 700
    passes = []
    for w in (default, own):
        young = 'bucketstream_gc_pause_seconds_count{generation="0"}'
        before = _metric(w, young)
        _new_users(w, 2_000, f"gc-{w.port}-")
        passes.append(_metric(w, young) - before)
    assert passes[0] <= 1 and passes[1] >= 3, passes


def test_a_worker_fixes_the_allocators_mmap_threshold_it_is_given_and_leaves_it_with_0(pool):
    """BUCKETSTREAM_HEAP_MMAP_THRESHOLD_KB reaches glibc's mallopt in a real worker (the gauge is set from
    what glibc accepted); 0 leaves glibc's own. What it does is tests/test_heap.py's."""
    fixed, own = pool.start(1, heap_mmap_threshold_kb=256) + pool.start(1, heap_mmap_threshold_kb=0)
    assert _metric(fixed, "bucketstream_heap_mmap_threshold_bytes") == 256 * 1024
    assert _metric(own, "bucketstream_heap_mmap_threshold_bytes") == 0
