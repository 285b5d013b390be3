"""Builds the Faust app of one worker from its settings: the Worker, then the table, agents and routes registered for it.

Importing this module reads no settings and starts nothing. ``create_app``
is what ``bucketstream worker`` runs; ``faust -A bucketstream.app worker``
finds ``app``, built from the environment on first access.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import faust

from bucketstream import agents, kafka_auth, patches, recovery, rls, tables, web
from bucketstream.history import sync_history
from bucketstream.settings import Settings, load
from bucketstream.worker import Worker

log = logging.getLogger(__name__)


class BucketApp(faust.App):
    """A Faust app for one Worker: its topics' history and bulk recovery come before Faust's
    consumer subscribes, and its own stop before Faust's (``agents.publish_before_stopping``)."""

    worker: Worker
    bucket_table: faust.Table
    bucket_agents: agents.Agents

    async def on_first_start(self) -> None:
        await super().on_first_start()
        # the topics exist: `bucketstream worker` creates them before it builds the app
        await sync_history(self.worker.settings, self.worker.rules)
        await self._bulk_recover()

    def _new_transport(self):
        return patches.Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        await self.bucket_agents.publish_before_stopping()  # before Faust's own stop, which may hang with the broker away
        await super().on_stop()

    async def _bulk_recover(self) -> None:
        """Load the table's changelog into its RocksDB stores in bulk before Faust's own
        (per-event) recovery starts; Faust then replays only the rest (``recovery.py``)."""
        settings, stats = self.worker.settings, self.worker.bulk_recovery
        table = self.bucket_table
        try:
            await recovery.preload(table.data, table.changelog_topic_name, settings.partitions,
                                   kafka_auth.client_kwargs(settings), client_id=f"{settings.node_id}-bulk-recovery",
                                   stats=stats)
        except Exception as exc:  # noqa: BLE001 - Faust's own recovery still reads everything that is missing
            stats.error = repr(exc)
            log.exception("bulk recovery failed; Faust recovers the rest from the changelog")
            return
        log.info("bulk recovery: %d changelog records (%d deletes) into %d partition stores in %.1fs",
                 stats.records, stats.deletes, len(stats.partitions), stats.seconds)


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> BucketApp:
    """The Faust app of one worker: checks the private internals it relies on (``patches``),
    builds the Worker, and registers the table, the agents and the web routes for it."""
    patches.check()
    worker = Worker(settings, clock)
    app = BucketApp(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=kafka_auth.faust_credentials(settings),  # TLS and SASL, as every other client
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
        TableManager=patches.TableManager,  # standby changelog events written in batches
    )
    app.worker = worker
    app.bucket_table = tables.register(app, worker)
    app.bucket_agents = agents.register(app, worker, app.bucket_table)
    web.register(app, worker, app.bucket_table)
    rls.register(app, worker)
    return app


def __getattr__(name: str):
    # ``faust -A bucketstream.app worker``: the app of the environment's settings, built once
    if name == "app":
        global app
        app = create_app(load())
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
