"""Bulk recovery: fill the table's RocksDB partitions from the changelog before Faust does.

Faust recovers a table one changelog event at a time (consumer thread,
conductor, a ``wait_for`` and a callback per event): about 3,500 keys/s. This
reads the same changelog with one plain aiokafka consumer (``getmany``) and
writes each partition's records into that partition's RocksDB store with a
``WriteBatch``, together with the changelog offset Faust keeps in the store
(``Store.offset_key``). Faust's own recovery then starts at that offset
(``Recovery._add`` reads ``table.persisted_offset``) and replays only what
arrived since.

It runs once, at start-up, before the Faust consumer subscribes
(``BucketApp.on_first_start``), for every partition of the changelog: every
worker holds every partition (active or standby). The stores are opened and
closed through Faust's own store object (``partition_path``,
``rocksdb_options.open``), so the files are exactly the ones Faust opens next.

Nothing here calls ``limiter.on_replica_changed``: the decoded cache starts
empty, and a miss reads RocksDB. Faust's store internals are reached through
``patches``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from bucketstream import patches
from bucketstream.topics import read_to_end

log = logging.getLogger(__name__)

#: Per-partition and per-fetch byte limits: a few large fetches, not many 1 MB ones.
MAX_PARTITION_FETCH_BYTES = 16 * 1024 * 1024
FETCH_MAX_BYTES = 64 * 1024 * 1024
#: Records materialised per ``getmany`` (and so per ``WriteBatch`` at most): bounds the
#: Python objects alive at once when one fetch brings most of a partition.
MAX_RECORDS = 50_000


@dataclass
class BulkStats:
    """What the bulk loader did (``/stats`` shows it as ``bulk_recovery``)."""

    records: int = 0  # changelog records written (puts and deletes)
    deletes: int = 0  # of which tombstones
    seconds: float = 0.0
    partitions: dict[int, dict] = field(default_factory=dict)  # partition -> {"from", "to", "records"}
    error: str | None = None

    def as_dict(self) -> dict:
        return {"records": self.records, "deletes": self.deletes, "seconds": round(self.seconds, 3),
                "partitions": {str(p): v for p, v in sorted(self.partitions.items())}, "error": self.error}


async def preload(store, topic: str, partitions: int, kafka: dict,
                  client_id: str = "bucketstream-bulk-recovery", stats: BulkStats | None = None) -> BulkStats:
    """Bring every partition store of ``store`` (a ``faust.stores.rocksdb.Store``) up to the
    changelog's end offset, as of now. ``kafka`` is ``kafka_auth.client_kwargs(settings)``.

    Starts each partition after the offset the store already holds (a restarted
    worker reads only what it has not seen), writes records and the new offset
    in one ``WriteBatch`` per fetched chunk, and closes the stores again so that
    Faust opens them as it always does.
    """
    import rocksdict

    stats = BulkStats() if stats is None else stats
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        **kafka,  # kafka_auth.client_kwargs: brokers, TLS, SASL
        group_id=None,
        enable_auto_commit=False,
        client_id=client_id,
        key_deserializer=None,
        value_deserializer=None,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        fetch_max_wait_ms=100,
        isolation_level="read_uncommitted",  # what Faust's own recovery reads
    )
    await consumer.start()
    dbs: dict[int, object] = {}
    offset_key = store.offset_key
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        behind = []
        for tp in tps:
            end = ends[tp]
            if end <= begins[tp]:
                continue  # empty (or compacted away): nothing to write, no store to create
            db = dbs[tp.partition] = patches.open_partition_store(store, tp.partition)
            raw = db.get(offset_key)
            persisted = int(raw) if raw is not None else None
            start = max(begins[tp], persisted + 1 if persisted is not None else 0)
            if start >= end:
                continue  # the store is already current
            consumer.seek(tp, start)
            behind.append(tp)
            stats.partitions[tp.partition] = {"from": start, "to": start - 1, "records": 0}

        def write(tp: TopicPartition, records: list) -> None:
            wb = rocksdict.WriteBatch(raw_mode=True)
            deletes = 0
            for record in records:
                if record.value is None:
                    wb.delete(record.key)
                    deletes += 1
                else:
                    wb.put(record.key, record.value)
            last = records[-1].offset
            # the offset Faust keeps: that of the last record applied (Store.set_persisted_offset)
            wb.put(offset_key, str(last).encode())
            dbs[tp.partition].write(wb)
            part = stats.partitions[tp.partition]
            part["to"] = last
            part["records"] += len(records)
            stats.records += len(records)
            stats.deletes += deletes

        if behind:
            await read_to_end(consumer, behind, write, max_records=MAX_RECORDS)
        for tp in behind:
            part = stats.partitions[tp.partition]
            position = await consumer.position(tp)
            if position - 1 > part["to"]:
                # no record after the last one applied (a gap, e.g. a transaction marker):
                # everything up to the end is applied, which is what the readiness check compares
                dbs[tp.partition].put(offset_key, str(position - 1).encode())
                part["to"] = position - 1
    finally:
        for db in dbs.values():
            db.close()  # Faust opens (and locks) them next
        await consumer.stop()
        stats.seconds = time.monotonic() - started
    return stats
