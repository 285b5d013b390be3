"""The Worker built from Settings and a fake clock, and its request path, with no Faust app and no Kafka."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from bucketstream import crdt
from bucketstream.settings import Settings
from bucketstream.web import protector
from bucketstream.worker import SWEEPS_PER_HORIZON, Worker


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Request:
    """What ``protect`` reads of an aiohttp request: its headers."""

    def __init__(self, user: str) -> None:
        self.headers = CIMultiDict([("X-User-ID", user)])


def ready_worker(clock: Clock, **settings) -> Worker:
    w = Worker(Settings(**settings), clock=clock, slot=7)
    w.tables_recovered = lambda: True
    w.mark_peer_feed_ready()
    return w


def status(answer) -> tuple[int, dict]:
    return answer.status, json.loads(answer.body)


def test_the_request_path_refills_by_the_workers_clock_not_the_wall_clock():
    clock = Clock()
    protect = protector(ready_worker(clock, capacity=2, rate=0.5))
    assert [status(protect(Request("u"), None))[0] for _ in range(3)] == [200, 200, 429]
    clock.now += 1.9  # not yet a whole token back (0.5/s)
    code, body = status(protect(Request("u"), None))
    assert code == 429 and body["retry_after"] == 1
    clock.now += 0.1
    assert status(protect(Request("u"), None))[0] == 200


def test_a_worker_answers_503_until_ready_and_while_stopping():
    clock = Clock()
    w = Worker(Settings(), clock=clock)
    protect = protector(w)
    assert status(protect(Request("u"), None)) == (503, {"error": "tables are recovering; try again shortly"})
    w.tables_recovered = lambda: True
    assert status(protect(Request("u"), None))[0] == 503  # the peer feed has not caught up
    w.mark_peer_feed_ready()
    assert status(protect(Request("u"), None))[0] == 200
    w.mark_stopping()
    assert status(protect(Request("u"), None)) == (503, {"error": "this worker is stopping; try another one"})


def test_expiry_follows_the_workers_clock_and_horizon():
    clock = Clock()
    w = ready_worker(clock, capacity=10, rate=1, expire_after=60)
    policy = w.rules.policy("u", None)
    key = w.rules.key(policy, "u", None)
    _, state = crdt.try_consume(crdt.BucketState(), policy.rule, w.slot, clock.now)
    assert w.expire_horizon(policy.rule) == 60
    assert not w.is_stale(key, state, clock.now + 60)  # full again after 1 s, but not 60 s ago
    assert w.is_stale(key, state, clock.now + 62)


def test_the_default_sweep_reads_a_key_about_eight_times_per_horizon_not_sixty():
    w = Worker(Settings(), slot=7)  # expire_after 600 s, a run every 10 s, 8 partitions
    assert w.sweep_period() == 7  # floor(600 / 8 / 10): a pass every 70 s
    assert [w.sweep_slice(range(8), t) for t in range(8)] == [[0, 7], [1], [2], [3], [4], [5], [6], [0, 7]]
    assert Worker(Settings(expire_after=1, expire_check_interval=0.5), slot=7).sweep_period() == 1


@settings(max_examples=200, deadline=None)
@given(partitions=st.integers(1, 64), expire_after=st.floats(0.01, 1e6), interval=st.floats(0.01, 1e4),
       data=st.data())
def test_each_active_partition_is_swept_once_in_any_period_of_runs_and_a_period_is_short(
        partitions, expire_after, interval, data):
    """Every key is read once per pass (so it is deleted at most one pass after it went
    stale), and a pass lasts at most max(interval, expire_after / SWEEPS_PER_HORIZON)."""
    w = Worker(Settings(partitions=partitions, expire_after=expire_after, expire_check_interval=interval), slot=7)
    k = w.sweep_period()
    assert 1 <= k <= partitions
    assert k * interval <= max(interval, expire_after / SWEEPS_PER_HORIZON)
    actives = data.draw(st.sets(st.integers(0, partitions - 1)))
    start = data.draw(st.integers(0, 10_000))
    swept = [p for t in range(start, start + k) for p in w.sweep_slice(actives, t)]
    assert sorted(swept) == sorted(actives)  # each once: none skipped, none read twice


def test_each_partition_store_gets_the_bounded_rocksdb_options(tmp_path):
    """Faust's defaults (64 MiB x 3 write buffers, a 2 GiB block cache per partition) are not
    what the stores open with: docs/operations.md's memory and disk bounds rest on these."""
    from bucketstream.app import create_app
    from bucketstream.tables import STORE_OPTIONS

    app = create_app(Settings(app_id="opts", data_dir=tmp_path))
    options = app.bucket_table.data.rocksdb_options
    assert {k: getattr(options, k) for k in STORE_OPTIONS} == STORE_OPTIONS
    assert STORE_OPTIONS["write_buffer_size"] * STORE_OPTIONS["max_write_buffer_number"] <= 8 << 20


def test_all_partition_stores_of_a_worker_share_one_memtable_budget(tmp_path):
    """Writes to any partition store count against one write buffer manager of
    rocksdb_memtable_mb, so a worker's memtables stop growing at that budget however many
    partitions it holds; /stats (store_memory) reports what it holds."""
    from bucketstream import patches
    from bucketstream.app import create_app

    app = create_app(Settings(app_id="budget", data_dir=tmp_path, rocksdb_memtable_mb=6))
    table = app.bucket_table
    manager = table.data.rocksdb_options.extra_options["write_buffer_manager"]
    assert manager.get_buffer_size() == 6 << 20
    before = manager.get_usage()
    for partition in (0, 5):
        db = patches.store_db(table, partition)
        for i in range(2000):
            db[b"k%d" % i] = b"v" * 200
    assert manager.get_usage() > before  # both stores' memtables are counted by the one manager
    usage_one = manager.get_usage()
    db = patches.store_db(table, 7)
    for i in range(2000):
        db[b"k%d" % i] = b"v" * 200
    assert manager.get_usage() > usage_one
    memory = app.worker.store_memory()
    assert memory["stores"] == 3 and memory["memtables"] == manager.get_usage()


def test_walks_of_a_whole_store_leave_the_block_cache_to_point_reads(tmp_path):
    """The expiry sweep and /stats's count read every flushed block of the table; through the
    block cache they would evict what decoded-cache misses read and fill the cache to its
    budget. They read past it; a point read still fills it."""
    from bucketstream import patches
    from bucketstream.app import create_app

    app = create_app(Settings(app_id="walk", data_dir=tmp_path, rocksdb_block_cache_mb=8))
    table = app.bucket_table
    cache = table.data.rocksdb_options.extra_options["block_cache"]
    db = patches.store_db(table, 2)
    for i in range(20_000):
        db[b"k%06d" % i] = b"v" * 100
    db.flush()
    before = cache.get_usage()
    assert len(list(patches.partition_items(table, 2))) == 20_000
    assert len(list(patches.partition_keys(table, 2))) == 20_000
    assert cache.get_usage() == before
    assert db[b"k000007"] == b"v" * 100
    assert cache.get_usage() > before


def test_counting_the_tables_keys_lets_requests_in_every_slice(tmp_path):
    """/stats's ``active_keys`` walks the stores (Faust's ``len(table)`` did it in one
    callback: 17-29 ms for 50,000 keys, every request waiting behind it). Counted here,
    the walk hands the loop back every COUNT_SLICE keys, and counts what is stored in the
    partitions asked for, without Faust's persisted-offset entry."""
    import asyncio

    from bucketstream import patches
    from bucketstream.app import create_app
    from bucketstream.tables import COUNT_SLICE

    app = create_app(Settings(app_id="count", data_dir=tmp_path))
    table = app.bucket_table
    for partition, n in ((0, 2 * COUNT_SLICE), (3, COUNT_SLICE + 1), (5, 7)):
        db = patches.store_db(table, partition)
        for i in range(n):
            db[b"k%d" % i] = b"v"
        db[table.data.offset_key] = b"42"  # Faust's own entry: not a key of the table

    async def count(partitions) -> tuple[int, int]:
        turns = 0

        async def other():  # a request's turn on the loop, for as long as the count lasts
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1
        task = asyncio.ensure_future(other())
        await asyncio.sleep(0)
        before = turns
        n = await app.worker.count_keys(partitions)
        task.cancel()
        return n, turns - before

    keys, turns = asyncio.run(count([0, 3, 5, 6]))
    assert keys == 3 * COUNT_SLICE + 8
    assert turns >= 3  # one at each of the 3 slices the walk passed
    assert asyncio.run(count([3]))[0] == COUNT_SLICE + 1


def test_all_partition_stores_of_a_worker_share_one_block_cache(tmp_path):
    """Reads of flushed data in any partition store fill one block cache of
    rocksdb_block_cache_mb, which stays within it however much is read from however many
    stores; /stats (store_memory) reports it once, not once per store."""
    from bucketstream import patches
    from bucketstream.app import create_app

    app = create_app(Settings(app_id="cache", data_dir=tmp_path, rocksdb_block_cache_mb=1))
    table = app.bucket_table
    cache = table.data.rocksdb_options.extra_options["block_cache"]
    dbs = [patches.store_db(table, partition) for partition in (0, 3, 6)]
    for db in dbs:  # 3 x 1.5 MB of flushed data: more than the cache holds
        for i in range(1500):
            db[b"k%d" % i] = b"v" * 1000
        db.flush()

    def read_all(db):
        for i in range(1500):
            assert db[b"k%d" % i] == b"v" * 1000

    read_all(dbs[0])
    one = cache.get_usage()
    assert one > 0
    assert [db.property_int_value("rocksdb.block-cache-usage") for db in dbs] == [one] * 3  # one cache
    for db in dbs[1:]:
        read_all(db)
    assert 0 < cache.get_usage() <= 1 << 20
    memory = app.worker.store_memory()
    assert memory["stores"] == 3 and memory["block_cache"] == cache.get_usage()


def test_no_shared_block_cache_when_it_is_set_to_zero(tmp_path):
    from bucketstream import patches
    from bucketstream.app import create_app

    app = create_app(Settings(app_id="nocache", data_dir=tmp_path, rocksdb_block_cache_mb=0))
    table = app.bucket_table
    assert "block_cache" not in table.data.rocksdb_options.extra_options
    a, b = patches.store_db(table, 0), patches.store_db(table, 1)
    usage = lambda db: db.property_int_value("rocksdb.block-cache-usage")  # noqa: E731
    b_before = usage(b)
    a[b"k"] = b"v" * 200
    a.flush()
    assert a[b"k"] == b"v" * 200
    assert usage(a) > usage(b) == b_before  # each store its own cache
    assert app.worker.store_memory()["block_cache"] == usage(a) + usage(b)


def test_a_block_cache_below_one_mib_stops_the_start_naming_the_setting():
    from bucketstream.settings import ConfigError, load

    with pytest.raises(ConfigError, match="BUCKETSTREAM_ROCKSDB_BLOCK_CACHE_MB: .*at least 1 MiB"):
        load({"rocksdb_block_cache_mb": 0.5})
    assert load({"rocksdb_block_cache_mb": 0}).rocksdb_block_cache_mb == 0


def test_a_memtable_budget_below_one_mib_stops_the_start_naming_the_setting():
    from bucketstream.settings import ConfigError, load

    with pytest.raises(ConfigError, match="BUCKETSTREAM_ROCKSDB_MEMTABLE_MB: .*at least 1 MiB"):
        load({"rocksdb_memtable_mb": 0.001})
    assert load({"rocksdb_memtable_mb": 0}).rocksdb_memtable_mb == 0


def test_a_negative_heap_trim_interval_stops_the_start_naming_the_setting():
    from bucketstream.settings import ConfigError, load

    with pytest.raises(ConfigError, match="BUCKETSTREAM_HEAP_TRIM_INTERVAL: .*greater than or equal to 0"):
        load({"heap_trim_interval": -1})
    assert load({"heap_trim_interval": 0}).heap_trim_interval == 0


def test_an_mmap_threshold_out_of_its_range_stops_the_start_naming_the_setting():
    from bucketstream.settings import ConfigError, load

    with pytest.raises(ConfigError, match="BUCKETSTREAM_HEAP_MMAP_THRESHOLD_KB: .*less than or equal to 32768"):
        load({"heap_mmap_threshold_kb": 32769})
    with pytest.raises(ConfigError, match="BUCKETSTREAM_HEAP_MMAP_THRESHOLD_KB: .*greater than or equal to 0"):
        load({"heap_mmap_threshold_kb": -1})
    assert load({"heap_mmap_threshold_kb": 0}).heap_mmap_threshold_kb == 0


def test_a_young_collector_threshold_out_of_its_range_stops_the_start_naming_the_setting():
    from bucketstream.settings import ConfigError, load

    with pytest.raises(ConfigError, match="BUCKETSTREAM_GC_YOUNG_THRESHOLD: .*greater than or equal to 0"):
        load({"gc_young_threshold": -1})
    with pytest.raises(ConfigError, match="BUCKETSTREAM_GC_YOUNG_THRESHOLD: .*less than or equal to 1000000"):
        load({"gc_young_threshold": 1_000_001})
    assert load({"gc_young_threshold": 0}).gc_young_threshold == 0


def test_no_shared_memtable_budget_when_it_is_set_to_zero(tmp_path):
    from bucketstream import patches
    from bucketstream.app import create_app

    app = create_app(Settings(app_id="nobudget", data_dir=tmp_path, rocksdb_memtable_mb=0))
    table = app.bucket_table
    assert "write_buffer_manager" not in table.data.rocksdb_options.extra_options
    db = patches.store_db(table, 0)
    db[b"k"] = b"v" * 200
    assert app.worker.store_memory()["memtables"] > 0  # each store's own memtables, summed
