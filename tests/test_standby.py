"""Standby replicas on real workers and the real broker: changelog events reach the view at once and RocksDB in batches.

A worker applies the changelog events of its standby partitions in batches
(``patches._Recovery``): each event goes to ``limiter.on_replica_changed`` as it
arrives, the store gets a write batch per flush, and until then point reads find
the event in ``patches.unflushed``. These tests check what a listener's replica
ends up holding, in its RocksDB files, against the changelog in Kafka.
"""

from __future__ import annotations

import pytest
import rocksdict

from bucketstream import patches
from bucketstream.app import create_app
from bucketstream.settings import Settings
from tests.cluster import wait_until
from tests.helpers import bucket_key, changelog_topic, read_topic, stats

pytestmark = pytest.mark.broker


def stored(w, partition: int) -> dict[bytes, bytes]:
    """What a stopped worker's RocksDB store of one table partition holds (its files, read-only)."""
    path = w.data_dir / "v1" / "tables" / f"buckets-{partition}.db"
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                         access_type=rocksdict.AccessType.read_only())
    try:
        return {k: v for k, v in db.items() if b"|" in k}  # bucket keys, not Faust's offset key
    finally:
        db.close()


def test_standby_events_reach_the_view_at_once_and_rocksdb_in_batches(pool, broker):
    """A admits 30 new users whose partitions B holds as a standby. B's limiter is handed
    every changelog event (one changelog-lag sample each), nothing stays unflushed for
    long with no more events coming, and after kill -9 (no flush on the way out) B's
    RocksDB files hold each key's latest changelog value."""
    a, b = pool.start(2, capacity=5, rate=0.01, hold_share=0)  # hold_share 0: every admission is published
    users = [u for u in (f"user-{i}" for i in range(400)) if b.bucket(u)["role"] == "standby"][:30]
    assert len(users) == 30
    keys = {bucket_key(a, u): b.bucket(u)["partition"] for u in users}
    before = stats(b)["changelog_lag"]["samples"]
    for u in users:
        assert a.protected(u)[0] == 200

    topic = changelog_topic(pool.app_id)

    def in_changelog():
        history = read_topic(broker, topic)
        return all(k in history for k in keys) and history
    history = wait_until(in_changelog, 30, 0.2, "the merge agent wrote every key to the changelog")
    wait_until(lambda: stats(b)["changelog_lag"]["samples"] >= before + len(keys), 30, 0.05,
               "B's limiter was handed a changelog event per key")
    # the last events wait for STANDBY_FLUSH_WITHIN, not for STANDBY_BATCH more events
    wait_until(lambda: stats(b)["unflushed_changelog_keys"] == 0, 10, 0.05,
               "B wrote every standby event to RocksDB")
    assert all(b.bucket(u)["replica_consumed"] == 1 for u in users)

    b.kill9()
    on_disk: dict[bytes, bytes] = {}
    for partition in set(keys.values()):
        on_disk.update(stored(b, partition))
    assert {k: on_disk.get(k) for k in keys} == {k: history[k] for k in keys}


def test_a_point_read_finds_an_event_not_yet_in_rocksdb(tmp_path):
    """``read_stored`` answers from the events waiting for the next flush before RocksDB:
    a cache miss never reads an older state than the changelog gave this worker."""
    app = create_app(Settings(data_dir=tmp_path, app_id="standby-unit"))
    pending = patches.unflushed(app, app.bucket_table)
    key = b"1|default|someone"
    patches.store_db(app.bucket_table, app.worker.partition_for(key)).put(key, b"in rocksdb")
    assert app.worker.read_stored(key) == b"in rocksdb"
    pending[key] = b"read, not written yet"
    assert app.worker.read_stored(key) == b"read, not written yet"
    pending[key] = None  # a tombstone not written yet
    assert app.worker.read_stored(key) is None
    app.tables.recovery.flush_buffers()  # a flush (Faust's too: revoke, stop) empties it
    assert pending == {}
