"""The Faust app, and nothing else (``faust -A bucketstream.app worker`` finds ``app``).

Settings come from the environment (``bucketstream.settings``); the tables,
agents and web views register themselves when their modules are imported at
the bottom of this file.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import faust
from faust.transport.drivers import aiokafka as faust_kafka

from bucketstream.settings import load
from bucketstream.topics import ensure_topics

settings = load()
log = logging.getLogger(__name__)

#: This process's CRDT slot: fresh at every start, so a restarted worker never
#: counts from zero against the counter it had before (docs/design.md, node identity).
SLOT = secrets.randbits(63)


#: How long the broker may hold a peer-feed fetch (agents.py) that has no data:
#: that consumer is the replication path, and the broker answers it as soon as
#: one byte is there. 20 ms costs an idle worker about 50 small fetch requests
#: a second.
FETCH_MAX_WAIT_MS = 20
#: Faust's own consumer (the merge agent's updates, the standby changelogs) is
#: not on the replication path: the peer feed brings every state to the view
#: first. So it asks the broker for FAUST_FETCH_MIN_BYTES, or whatever is there
#: after FAUST_FETCH_MAX_WAIT_MS, instead of a fetch per few records: under load
#: that was a fifth of a worker's CPU (fetch requests and their cross-thread
#: wake-ups) for nothing the view needed. Faust hard-codes 1500 ms, which also
#: held new records back that long when a fetch was already waiting as a
#: partition was resumed or a standby started (1.6 s delays before the peer feed).
FAUST_FETCH_MAX_WAIT_MS = 100
FAUST_FETCH_MIN_BYTES = 64 * 1024
#: aiokafka holds back the next fetch from a broker for up to 100 ms while any
#: partition's fetched records are not yet taken by Faust; 5 ms keeps that wait
#: out of the replication delay.
PREFETCH_BACKOFF = 0.005


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # read by the fetcher aiokafka builds at start
        consumer._fetch_max_wait_ms = FAUST_FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = FAUST_FETCH_MIN_BYTES
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None:
            fetcher._prefetch_backoff = PREFETCH_BACKOFF

    async def on_thread_stop(self) -> None:
        # With the broker away, aiokafka's Fetcher.close() cancels a fetch that is
        # backing off after a failed request and awaits it, which re-raises the
        # cancellation (aio-libs/aiokafka#647); mode then never marks the consumer
        # thread shut down, and the worker hung on SIGTERM for good.
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            log.warning("Kafka consumer stopped without closing cleanly (broker away?)")


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class BucketApp(faust.App):
    """A Faust app that creates its topics before its consumer subscribes to them,
    and whose consumer does not park fetches for 1.5 s."""

    async def on_first_start(self) -> None:
        await super().on_first_start()
        await ensure_topics(settings)
        from bucketstream.history import sync_history
        from bucketstream.tables import RULES

        await sync_history(settings, RULES)
        await _bulk_recover()

    def _new_transport(self):
        return _Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        from bucketstream.agents import publish_before_stopping

        await publish_before_stopping()  # before Faust's own stop, which may hang with the broker away
        await super().on_stop()


async def _bulk_recover() -> None:
    """Load the table's changelog into its RocksDB stores in bulk before Faust's own
    (per-event) recovery starts; Faust then replays only the rest (``recovery.py``)."""
    from bucketstream import recovery
    from bucketstream.tables import buckets
    from bucketstream.topics import bootstrap_servers

    try:
        stats = await recovery.preload(buckets.data, buckets.changelog_topic_name, settings.partitions,
                                       bootstrap_servers(settings), client_id=f"{settings.node_id}-bulk-recovery")
    except Exception as exc:  # noqa: BLE001 - Faust's own recovery still reads everything that is missing
        recovery.STATS.error = repr(exc)
        log.exception("bulk recovery failed; Faust recovers the rest from the changelog")
        return
    log.info("bulk recovery: %d changelog records (%d deletes) into %d partition stores in %.1fs",
                stats.records, stats.deletes, len(stats.partitions), stats.seconds)


app = BucketApp(
    settings.app_id,
    broker=settings.broker,
    store="rocksdb://",
    datadir=str(settings.data_dir),
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.topic_replication,
    topic_allow_declare=True,
    # every worker holds every partition: active or standby (the assignor caps it at workers - 1)
    table_standby_replicas=64,
    stream_wait_empty=False,  # joins are idempotent: no need to drain on rebalance
    producer_acks=-1,
    producer_linger=0.005,
    broker_commit_interval=1.0,
    # a worker that dies (kill -9) gives up its partitions after 10 s, not 60 s
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=30.0,
    consumer_auto_offset_reset="earliest",
    key_serializer="raw",  # bucket keys and encoded states are bytes everywhere
    value_serializer="raw",
)

from bucketstream import agents, tables, web  # noqa: E402,F401  (register with the app)
