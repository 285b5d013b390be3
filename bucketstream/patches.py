"""Every use of a library's private internals (aiohttp, aiokafka, Faust), in one place, checked at start-up.

Each one exists for a measured reason, given where it is defined. They were
written against the versions pinned in ``pyproject.toml`` (faust-streaming
0.15.3, aiokafka 0.14, aiohttp 3.14); :func:`check` runs before a worker
builds its app and stops it with :class:`PatchError`, naming every attribute
that is no longer there, instead of a silent slowdown or a crash under load.
Nothing else in bucketstream touches a library's private names.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re

import aiokafka
from aiohttp import web as aioweb
from aiohttp.web_protocol import RequestHandler
from aiokafka.consumer.fetcher import Fetcher
from faust.stores import rocksdb as faust_rocksdb
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_kafka
from faust.web.drivers import aiohttp as faust_web
from faust.worker import Worker as FaustWorker

log = logging.getLogger(__name__)


class PatchError(RuntimeError):
    """A private internal bucketstream relies on is missing: another version of a library."""


#: (owner, attribute, where, what for): where is "class" (a class attribute or method) or the
#: name of the owner's method that assigns it to the instance ("__init__", "on_start").
USED = [
    (aiokafka.AIOKafkaConsumer, "_fetch_max_wait_ms", "__init__", "Faust's consumer fetch wait (FAUST_FETCH_MAX_WAIT_MS)"),
    (aiokafka.AIOKafkaConsumer, "_fetch_min_bytes", "__init__", "Faust's consumer fetch size (FAUST_FETCH_MIN_BYTES)"),
    (aiokafka.AIOKafkaConsumer, "_fetcher", "__init__", "the fetcher whose prefetch back-off is shortened"),
    (Fetcher, "_prefetch_backoff", "__init__", "no 100 ms hold-back of the next fetch (PREFETCH_BACKOFF)"),
    (faust_kafka.AIOKafkaConsumerThread, "_create_worker_consumer", "class", "Faust's consumer settings"),
    (faust_kafka.AIOKafkaConsumerThread, "_consumer", "on_start", "Faust's aiokafka consumer"),
    (faust_kafka.AIOKafkaConsumerThread, "on_thread_stop", "class", "a stop with the broker away (aiokafka#647)"),
    (faust_kafka.Consumer, "_new_consumer_thread", "class", "Faust's consumer thread class"),
    (faust_rocksdb.Store, "_dbs", "__init__", "one RocksDB point read per cache miss (store_dbs)"),
    (faust_rocksdb.Store, "_db_for_partition", "class", "the merge agent's own table writes (store_db)"),
    (faust_rocksdb.Store, "offset_key", "class", "bulk recovery writes Faust's persisted offset"),
    (faust_rocksdb.Store, "partition_path", "class", "bulk recovery opens Faust's own store files"),
    (faust_rocksdb.Store, "rocksdb_options", "__init__", "bulk recovery opens Faust's own store files"),
    (Recovery, "standby_offsets", "__init__", "readiness with empty or current standbys"),
    (Recovery, "standby_highwaters", "__init__", "readiness with empty or current standbys"),
    (faust_web.Web, "_runner", "__init__", "JSON error answers from aiohttp's own protocol handler"),
    (aioweb.AppRunner, "_make_server", "class", "JSON error answers from aiohttp's own protocol handler"),
    (aioweb.Server, "_loop", "__init__", "JSON error answers from aiohttp's own protocol handler"),
    (aioweb.Server, "_kwargs", "__init__", "JSON error answers from aiohttp's own protocol handler"),
    (RequestHandler, "finish_response", "class", "JSON answers for aiohttp's 404/405"),
    (RequestHandler, "handle_error", "class", "JSON answers for requests aiohttp's parser refuses"),
    (FaustWorker, "spinner", "__init__", "no terminal spinner: Faust would set the root logger to DEBUG"),
]


def _present(owner: type, name: str, where: str) -> bool:
    if where == "class":
        return hasattr(owner, name)
    try:
        source = inspect.getsource(getattr(owner, where))
    except (AttributeError, OSError, TypeError):
        return False
    return re.search(rf"self\.{name}\s*(:[^=\n]*)?=[^=]", source) is not None


def missing() -> list[str]:
    return [f"{owner.__module__}.{owner.__qualname__}.{name} ({why})"
            for owner, name, where, why in USED if not _present(owner, name, where)]


def check() -> None:
    """Raise PatchError naming every private internal that is not where it was."""
    gone = missing()
    if gone:
        raise PatchError("this version of aiohttp/aiokafka/faust lacks what bucketstream relies on: "
                         + "; ".join(gone) + " (install the versions pinned in pyproject.toml)")


# -- aiokafka: fetch timing -------------------------------------------------------------

#: aiokafka holds back the next fetch from a broker for up to 100 ms while any
#: partition's fetched records are not yet taken; 5 ms keeps that wait out of
#: the replication delay.
PREFETCH_BACKOFF = 0.005
#: Faust's own consumer (the merge agent's updates, the standby changelogs) is
#: not on the replication path: the peer feed brings every state to the view
#: first. So it asks the broker for FAUST_FETCH_MIN_BYTES, or whatever is there
#: after FAUST_FETCH_MAX_WAIT_MS, instead of a fetch per few records: under load
#: that was a fifth of a worker's CPU for nothing the view needed. Faust
#: hard-codes 1500 ms, which also held new records back that long when a fetch
#: was already waiting as a partition was resumed or a standby started.
FAUST_FETCH_MAX_WAIT_MS = 100
FAUST_FETCH_MIN_BYTES = 64 * 1024


def shorten_prefetch_backoff(consumer: aiokafka.AIOKafkaConsumer) -> None:
    """A started consumer's fetcher: no 100 ms hold-back of the next fetch."""
    consumer._fetcher._prefetch_backoff = PREFETCH_BACKOFF


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # read by the fetcher aiokafka builds at start
        consumer._fetch_max_wait_ms = FAUST_FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = FAUST_FETCH_MIN_BYTES
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        shorten_prefetch_backoff(self._consumer)

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


class Transport(faust_kafka.Transport):
    """Faust's Kafka transport with the consumer above (``BucketApp._new_transport``)."""

    Consumer = _Consumer


# -- Faust's RocksDB store ----------------------------------------------------------------

def store_dbs(table) -> dict:
    """Partition -> the open ``rocksdict.Rdict`` of a Faust RocksDB table (opened ones only)."""
    return table.data._dbs


def store_db(table, partition: int):
    """The ``rocksdict.Rdict`` of one table partition, opened on first use."""
    return table.data._db_for_partition(partition)


def open_partition_store(store, partition: int):
    """Open the RocksDB files Faust opens for ``partition``, as Faust would (bulk recovery)."""
    return store.rocksdb_options.open(store.partition_path(partition))


def standbys_caught_up(app) -> bool:
    """Every standby partition read up to the highwater Faust recorded for it.

    Faust flips ``standbys_ready`` only after reading a standby event, so it
    stays False forever when the standby partitions are empty or already
    current; this compares the offsets instead.
    """
    recovery = app.tables.recovery
    offsets = recovery.standby_offsets
    return all(offsets.get(tp, -1) >= hw for tp, hw in recovery.standby_highwaters.items())


# -- Faust's worker ---------------------------------------------------------------------

def no_spinner(worker: FaustWorker) -> None:
    """No terminal spinner: at a log level of WARNING or above Faust would add a spinner
    handler and set the root logger to DEBUG (faust/worker.py, _setup_spinner_handler),
    so every log.debug of aiokafka, mode and Faust built a LogRecord: 3 % of a hot-user
    worker's CPU, 11 % under unique users."""
    worker.spinner = None


# -- aiohttp: JSON answers for what never reaches a handler ----------------------------------

def serve_with_handler(faust_app, handler_class: type[RequestHandler]) -> None:
    """Faust's aiohttp server builds every connection's protocol handler from ``handler_class``
    (a ``RequestHandler`` subclass: ``web._JsonRequestHandler``). Faust starts its web server
    through this runner (faust/web/drivers/aiohttp.py)."""

    class Server(aioweb.Server):
        def __call__(self) -> RequestHandler:
            return handler_class(self, loop=self._loop, **self._kwargs)

    class Runner(aioweb.AppRunner):
        async def _make_server(self) -> aioweb.Server:
            server = await super()._make_server()
            server.__class__ = Server
            return server

    faust_app.web._runner = Runner(faust_app.web.web_app, access_log=None)
