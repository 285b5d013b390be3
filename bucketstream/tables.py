"""The bucket table, registered on a Faust app for a Worker.

``buckets``: key = bucket key (bytes), value = an encoded ``BucketState``.
Partitioned by key like the update topic (same partition count, raw key
bytes, Kafka's default partitioner), changelog on a compacted topic, RocksDB
store through rocksdict. Only the merge agent writes it (``agents.py``).

Every worker holds every partition, active or standby
(``table_standby_replicas`` in ``app.py``), so a point read from a web view
finds any key locally. Every change of the replica, from the changelog or from
the agent's own write, goes to ``limiter.on_replica_changed`` as it arrives.
Standby changelog events reach RocksDB in batches (``patches.STANDBY_BATCH``,
``patches.STANDBY_FLUSH_WITHIN``); until then ``read_stored`` finds them in
``patches.unflushed``, so a point read is as current as with a write per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import faust
import rocksdict

from bucketstream import patches
from bucketstream.topics import TABLE
from bucketstream.worker import Worker


#: Each partition's RocksDB store (Faust's Table ``options``). Faust's defaults are 64 MiB
#: write buffers, up to 3 of them, and a 2 GiB block cache, per partition: a table of a few
#: MB then grows its memtables and write-ahead log for hours before the first flush, and a
#: worker's memory has no useful bound. With these, a store holds at most 2 x 4 MiB of
#: memtable (and that much log) and 8 MiB of cache, and ``register`` puts every store of a
#: worker under one memtable budget and one block cache (docs/operations.md).
STORE_OPTIONS = {"write_buffer_size": 4 << 20, "max_write_buffer_number": 2, "block_cache_size": 8 << 20}

#: Counting keys hands the event loop back after this many (about half a millisecond of walking:
#: a request on a new connection needs several turns of the loop, each waiting for one slice).
COUNT_SLICE = 1_000


def register(app: faust.App, worker: Worker) -> faust.Table:
    """Declare the bucket table on ``app``; the worker reads it and learns its readiness through it."""
    limiter = worker.limiter
    # The memtables of all partition stores together (BUCKETSTREAM_ROCKSDB_MEMTABLE_MB): past it
    # RocksDB flushes the largest. Per store alone, 8 partitions could hold 64 MiB, reached only
    # after many minutes of writes, so a worker's memory grew for that long. 0: no shared budget.
    # One block cache for all of them (BUCKETSTREAM_ROCKSDB_BLOCK_CACHE_MB), for the same reason:
    # 8 MiB per store is 64 MiB for 8 partitions, filled by reads of flushed data over hours.
    patches.share_store_budgets()
    budget = int(worker.settings.rocksdb_memtable_mb * (1 << 20))
    buffers = rocksdict.WriteBufferManager(budget, False) if budget else None
    cache_size = int(worker.settings.rocksdb_block_cache_mb * (1 << 20))
    cache = rocksdict.Cache(cache_size) if cache_size else None
    shared = {"write_buffer_manager": buffers, "block_cache": cache}

    async def on_changelog_event(event) -> None:
        now = worker.clock()
        limiter.changelog_lags.append(now - event.message.timestamp)
        limiter.on_replica_changed(event.key, event.value, now)

    table = app.Table(
        TABLE,
        partitions=worker.settings.partitions,
        key_type=bytes,
        value_type=bytes,
        standby_buffer_size=patches.STANDBY_BATCH,
        on_changelog_event=on_changelog_event,
        # a copy: Faust's store pops keys from the mapping it is given
        options=dict(STORE_OPTIONS, **{name: x for name, x in shared.items() if x is not None}),
        help="token buckets: bucket key -> encoded CRDT state",
    )
    partition_for = worker.partition_for
    unflushed = patches.unflushed(app, table)

    def read_stored(key: bytes) -> bytes | None:
        """The stored value of ``key`` in this worker's replica: a changelog event read but
        not written to RocksDB yet, or else one RocksDB point read in the key's own partition
        (Faust's ``Table.get`` outside an agent tries every partition's store, each with a
        bloom-filter probe and a read)."""
        if key in unflushed:
            return unflushed[key]
        db = patches.store_dbs(table).get(partition_for(key))
        if db is None:  # partition not opened yet: let Faust look
            return table.get(key)
        return db.get(key)

    def store_memory() -> dict[str, int]:
        """RocksDB's memory outside Python's heap: memtables (all stores, the shared budget),
        block caches and the open files' index and filter blocks (summed over the stores)."""
        dbs = list(patches.store_dbs(table).values())
        memtables = buffers.get_usage() if buffers else sum(
            db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0 for db in dbs)
        # with one cache, every store reports the whole cache's usage
        block_cache = cache.get_usage() if cache else sum(
            db.property_int_value("rocksdb.block-cache-usage") or 0 for db in dbs)
        return {"memtables": memtables,
                "block_cache": block_cache,
                "table_readers": sum(db.property_int_value("rocksdb.estimate-table-readers-mem") or 0 for db in dbs),
                "stores": len(dbs)}

    async def count_keys(partitions: Iterable[int]) -> int:
        """The keys stored in ``partitions``, counted a slice at a time: walking a table of a
        million keys takes about half a second, which in one callback (Faust's ``len(table)``)
        stalled every request behind it (docs/performance-journal.md)."""
        n = 0
        for partition in partitions:
            for _ in patches.partition_keys(table, partition):
                n += 1
                if n % COUNT_SLICE == 0:
                    await asyncio.sleep(0)
        return n

    def active_partitions() -> list[int]:
        """The table partitions this worker owns now (its merge agent writes them)."""
        topic = table.changelog_topic_name
        return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)

    worker.read_stored = read_stored
    worker.store_memory = store_memory
    worker.count_keys = count_keys
    worker.active_partitions = active_partitions
    worker.tables_recovered = lambda: app.tables.actives_ready and (
        app.tables.standbys_ready or patches.standbys_caught_up(app))
    return table
