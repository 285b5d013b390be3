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
from collections import defaultdict
from time import monotonic

import aiokafka
import rocksdict
from aiohttp import web as aioweb
from aiohttp.web_protocol import RequestHandler
from aiokafka.consumer.fetcher import Fetcher
from faust import streams as faust_streams
from faust.stores import rocksdb as faust_rocksdb
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_kafka
from faust.utils.tracing import finish_span
from faust.web.drivers import aiohttp as faust_web
from faust.worker import Worker as FaustWorker
from mode import Service
from mode.services import WaitResults
from mode.utils.aiter import aiter
from mode.utils.futures import notify

log = logging.getLogger(__name__)


class PatchError(RuntimeError):
    """A private internal bucketstream relies on is missing: another version of a library."""


_INLINE = "a Faust message delivered without four tasks when nothing blocks it (_Consumer.wait_first)"
_BATCHED = "the changelog reader that applies standby events in batches (Recovery)"
_TAKE = "the merge agent's batches, with no wake-up while no update comes (take_batches)"
_BUDGETS = "one memtable budget and one block cache for all of a worker's stores"

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
    (faust_consumer.Consumer, "suspend_flow", "__init__", _INLINE),
    (Service, "_stopped", "__init__", _INLINE),
    (Service, "_crashed", "__init__", _INLINE),
    (faust_rocksdb.Store, "_dbs", "__init__", "one RocksDB point read per cache miss (store_dbs)"),
    (faust_rocksdb.Store, "_db_for_partition", "class", "the merge agent's own table writes (store_db)"),
    (faust_rocksdb.Store, "offset_key", "class", "bulk recovery writes Faust's persisted offset; the expiry sweep skips it"),
    (faust_rocksdb.Store, "partition_path", "class", "bulk recovery opens Faust's own store files"),
    (faust_rocksdb.Store, "rocksdb_options", "__init__", "bulk recovery opens Faust's own store files"),
    (faust_rocksdb.RocksDBOptions, "as_options", "class", _BUDGETS),
    (faust_rocksdb.RocksDBOptions, "extra_options", "__init__", _BUDGETS),
    (faust_rocksdb.RocksDBOptions, "bloom_filter_size", "class", _BUDGETS),
    (Recovery, "standby_offsets", "__init__", "readiness with empty or current standbys"),
    (Recovery, "standby_highwaters", "__init__", "readiness with empty or current standbys"),
    (FaustTableManager, "_recovery", "class", _BATCHED),
    (Recovery, "_slurp_changelogs", "class", _BATCHED),
    (Recovery, "flush_buffers", "class", _BATCHED),
    (Recovery, "buffers", "__init__", _BATCHED),
    (Recovery, "buffer_sizes", "__init__", _BATCHED),
    (Recovery, "tp_to_table", "__init__", _BATCHED),
    (Recovery, "active_tps", "__init__", _BATCHED),
    (Recovery, "standby_tps", "__init__", _BATCHED),
    (Recovery, "active_offsets", "__init__", _BATCHED),
    (Recovery, "active_highwaters", "__init__", _BATCHED),
    (Recovery, "_active_events_received_at", "__init__", _BATCHED),
    (Recovery, "_standby_events_received_at", "__init__", _BATCHED),
    (Recovery, "_processing_times", "__init__", _BATCHED),
    (Recovery, "_last_flush_at", "class", _BATCHED),
    (Recovery, "_last_active_event_processed_at", "_set_recovery_started", _BATCHED),
    (Recovery, "in_recovery", "class", _BATCHED),
    (Recovery, "_actives_span", "class", _BATCHED),
    (Recovery, "_standbys_span", "class", _BATCHED),
    (Recovery, "_set_recovery_ended", "class", _BATCHED),
    (Recovery, "num_samples_required_for_estimate", "class", _BATCHED),
    (faust_web.Web, "_runner", "__init__", "JSON error answers from aiohttp's own protocol handler"),
    (aioweb.AppRunner, "_make_server", "class", "JSON error answers from aiohttp's own protocol handler"),
    (aioweb.Server, "_loop", "__init__", "JSON error answers from aiohttp's own protocol handler"),
    (aioweb.Server, "_kwargs", "__init__", "JSON error answers from aiohttp's own protocol handler"),
    (RequestHandler, "finish_response", "class", "JSON answers for aiohttp's 404/405"),
    (RequestHandler, "handle_error", "class", "JSON answers for requests aiohttp's parser refuses"),
    (FaustWorker, "spinner", "__init__", "no terminal spinner: Faust would set the root logger to DEBUG"),
    (faust_streams.Stream, "_enable_passive", "class", _TAKE),
    (faust_streams.Stream, "_processors", "__init__", _TAKE),
    (faust_streams.Stream, "_active_agens", "__init__", _TAKE),
]


def _source(owner: type, method: str) -> str | None:
    try:
        return inspect.getsource(getattr(owner, method))
    except (AttributeError, OSError, TypeError):
        return None


def _present(owner: type, name: str, where: str) -> bool:
    if where == "class":
        return hasattr(owner, name)
    source = _source(owner, where)
    return source is not None and re.search(rf"self\.{name}\s*(:[^=\n]*)?=[^=]", source) is not None


#: (owner, method, a call it must make, what for): an override that only pays off when a
#: library's method calls it where it did.
CALLS = [
    (faust_consumer.Consumer, "_drain_messages", "self.wait_first(", _INLINE),
    # _SharedBudgetOptions rebuilds Faust's block-based table options around one cache
    (faust_rocksdb.RocksDBOptions, "as_options", "set_bloom_filter(", _BUDGETS),
    (faust_rocksdb.RocksDBOptions, "as_options", "BlockBasedIndexType.binary_search()", _BUDGETS),
]


def _calls(owner: type, method: str, call: str) -> bool:
    return call in (_source(owner, method) or "")


def missing() -> list[str]:
    return ([f"{owner.__module__}.{owner.__qualname__}.{name} ({why})"
             for owner, name, where, why in USED if not _present(owner, name, where)]
            + [f"{owner.__module__}.{owner.__qualname__}.{method} calling {call!r} ({why})"
               for owner, method, call, why in CALLS if not _calls(owner, method, call)])


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


def prefetch_backoff(consumer: aiokafka.AIOKafkaConsumer, seconds: float = PREFETCH_BACKOFF) -> None:
    """A started consumer's fetcher: it holds back the next fetch from a broker at most
    ``seconds`` while records it fetched are not taken (then fetches without their partitions)."""
    consumer._fetcher._prefetch_backoff = seconds


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # read by the fetcher aiokafka builds at start
        consumer._fetch_max_wait_ms = FAUST_FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = FAUST_FETCH_MIN_BYTES
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        prefetch_backoff(self._consumer)

    async def on_thread_stop(self) -> None:
        # With the broker away, aiokafka's Fetcher.close() cancels a fetch that is
        # backing off after a failed request and awaits it, which re-raises the
        # cancellation (aio-libs/aiokafka#647); mode then never marks the consumer
        # thread shut down, and the worker hung on SIGTERM for good.
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            log.warning("Kafka consumer stopped without closing cleanly (broker away?)")


#: Messages delivered inline in a row before the event loop gets a turn. Faust's loop
#: yields every 100 messages; once deliveries no longer yield on their own, 100 of them
#: (a few milliseconds) would be a stretch every request waits behind.
INLINE_SLICE = 20


class _Consumer(faust_kafka.Consumer):
    _inline_run = 0

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros, timeout=None) -> WaitResults:
        """mode's ``Service.wait_first``, with its first awaitable run inline as far as it goes.

        Faust's consumer hands every message to its streams as
        ``wait_first(callback(message), suspend_flow.wait())`` so that a rebalance
        can abandon a delivery blocked on a full stream buffer. mode makes four
        tasks and an ``asyncio.wait`` of that, per message: a quarter of a merging
        worker's time, twice the merge agent's own work. The callback almost never
        blocks (it blocks only while flow is suspended, the producer buffer is over
        its limit or a stream's buffer is full), so it is stepped once here; if it
        finishes, that is the result mode gives when it finishes first. If it
        suspends, the rest of it races the events exactly as before. Every
        ``INLINE_SLICE`` inline deliveries the event loop gets a turn.
        """
        first = coros[0] if coros else None
        if (timeout is not None or not inspect.iscoroutine(first) or self.suspend_flow.is_set()
                or self._stopped.is_set() or self._crashed.is_set()):
            return await super().wait_first(*coros, timeout=timeout)
        try:
            yielded = first.send(None)
        except StopIteration as done:
            _close(coros[1:])
            self._inline_run += 1
            if self._inline_run >= INLINE_SLICE:
                self._inline_run = 0
                await asyncio.sleep(0)
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close(coros[1:])
            raise
        return await super().wait_first(_Resume(first, yielded), *coros[1:], timeout=timeout)


def _close(awaitables) -> None:
    # coroutines never started: closed, as mode's cancel of their tasks would have
    for aw in awaitables:
        if inspect.iscoroutine(aw):
            aw.close()


class _Resume:
    """The rest of ``coro``, which was stepped by hand and suspended on ``yielded``: hands
    ``yielded`` to the task awaiting it, then drives ``coro`` on; what the task sends or
    throws in goes to ``coro`` (cancellation included)."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro, yielded) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self):
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task: coro's to handle
                step, arg = coro.throw, exc
            else:
                step, arg = coro.send, sent
            try:
                yielded = step(arg)
            except StopIteration as done:
                return done.value


class Transport(faust_kafka.Transport):
    """Faust's Kafka transport with the consumer above (``BucketApp._new_transport``)."""

    Consumer = _Consumer


# -- Faust's stream: batches without a timer -----------------------------------------------

def take_batches(stream, max_: int, within: float):
    """Faust's ``Stream.take_events(max_, within)``, without its wake-up every ``within`` while idle.

    Faust's loop waits for a full buffer with ``within`` as the timeout, again and
    again, whether or not anything came: the merge agent (``within`` 10 ms) woke
    100 times a second, a quarter of an idle worker's CPU, each wake-up a
    ``wait_first`` with its tasks. Here the loop first waits, with no timeout, for
    the buffer's first event, then up to ``within`` for it to fill: the same
    batches under load, nothing while no update comes, and a lone update merged
    ``within`` after it arrived rather than at the next tick. Everything else is
    Faust's: the buffering processor, acks only once the batch was handled, the
    processor blocking while a full buffer or a batch is being handled, clean-up
    on close (the generator is registered as Faust's own are).
    """
    agen = _take_batches(stream, max_, within)
    stream._active_agens.add(agen)
    return agen


async def _take_batches(stream, max_: int, within: float):
    events: list = []
    started, full, consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    consuming: asyncio.Future | None = None
    acks = stream.enable_acks

    async def add_to_buffer(value):
        nonlocal consuming
        try:
            if consuming is not None:  # a batch is being handled: wait for it
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            events.append(event)
            started.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # as Faust's take_events: the stream crashes with it
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked below, once the batch was handled
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(started)
            if not events:  # stopping
                started.clear()
                continue
            await stream.wait_for_stopped(full, timeout=within)
            consuming = asyncio.get_running_loop().create_future()
            try:
                yield list(events)
            finally:
                batch = list(events)
                events.clear()
                for event in batch:
                    await stream.ack(event)
                notify(consuming)
                started.clear()
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add_to_buffer)


# -- Faust's RocksDB store ----------------------------------------------------------------

def store_dbs(table) -> dict:
    """Partition -> the open ``rocksdict.Rdict`` of a Faust RocksDB table (opened ones only)."""
    return table.data._dbs


def store_db(table, partition: int):
    """The ``rocksdict.Rdict`` of one table partition, opened on first use."""
    return table.data._db_for_partition(partition)


#: Whole-store walks (the expiry sweep, /stats's count) read past the block cache: a walk
#: would otherwise fill the worker's one cache with every block of the table, evicting
#: what point reads (decoded-cache misses) use, and grow the RSS up to the cache's budget.
_WALK = rocksdict.ReadOptions()
_WALK.fill_cache(False)


def _opened(table, partition: int):
    """``(the partition's open store or None, Faust's persisted-offset key)``."""
    store = table.data
    return store._dbs.get(partition), store.offset_key


def partition_keys(table, partition: int):
    """The keys of one partition's store (without Faust's persisted-offset entry); nothing
    if the store is not open."""
    db, offset_key = _opened(table, partition)
    if db is not None:
        yield from (key for key in db.keys(read_opt=_WALK) if key != offset_key)


def partition_items(table, partition: int):
    """``(key, stored value)`` of one partition's store, as ``table.items()`` yields them for
    every active partition at once (without Faust's persisted-offset entry); nothing if
    the store is not open."""
    db, offset_key = _opened(table, partition)
    if db is not None:
        yield from (item for item in db.items(read_opt=_WALK) if item[0] != offset_key)


class _SharedBudgetOptions(faust_rocksdb.RocksDBOptions):
    """Faust's RocksDB options, plus the ``write_buffer_manager`` and ``block_cache`` options
    its rocksdict path ignores (Faust passes unknown options to python-rocksdb only)."""

    def as_options(self):
        options = super().as_options()
        manager = self.extra_options.get("write_buffer_manager")
        if manager is not None:
            options.set_write_buffer_manager(manager)
        cache = self.extra_options.get("block_cache")
        if cache is not None:
            # Faust's table options (CALLS checks it still sets these), around the one cache
            table = rocksdict.BlockBasedOptions()
            table.set_bloom_filter(self.bloom_filter_size, block_based=True)
            table.set_block_cache(cache)
            table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
            options.set_block_based_table_factory(table)
        return options


def share_store_budgets() -> None:
    """Let a table's ``options`` carry one ``rocksdict.WriteBufferManager``
    (``BUCKETSTREAM_ROCKSDB_MEMTABLE_MB``) and one ``rocksdict.Cache``
    (``BUCKETSTREAM_ROCKSDB_BLOCK_CACHE_MB``) for all its partition stores: Faust builds each
    store's options from its module's ``RocksDBOptions``, and without them every partition
    store grows its own memtables and its own block cache."""
    faust_rocksdb.RocksDBOptions = _SharedBudgetOptions


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


# -- Faust's changelog reader: standby events in batches ---------------------------------

#: Standby changelog events wait in Faust's buffer until this many are there, or
#: STANDBY_FLUSH_WITHIN seconds after the first of them, then go to RocksDB in one
#: write batch per partition and one write of the persisted offset. Until then a
#: point read finds them in ``unflushed`` (``tables.read_stored``), so no read sees
#: an older state than with one write per event.
STANDBY_BATCH = 1000
STANDBY_FLUSH_WITHIN = 0.1
#: Faust's own wait for a changelog event before it looks at recovery's state again.
_IDLE_WAIT = 5.0
#: Events handled in a row before yielding to the event loop (a recovery can queue thousands).
_YIELD_EVERY = 100


def unflushed(app, table) -> dict:
    """Key -> raw value (``None``: deleted) of the changelog events of ``table`` this worker
    has read but not yet written to its RocksDB store; emptied, not replaced, by each flush."""
    return app.tables.unflushed[table]


class _Recovery(Recovery):
    """Faust's changelog reader (faust/tables/recovery.py), but cheaper per event.

    Faust's ``_slurp_changelogs`` wraps each ``changelog_queue.get()`` in its own
    ``asyncio.wait_for`` (a Task per event), writes standby events to RocksDB
    one at a time with ``standby_buffer_size=1`` (a write batch and a persisted-offset
    write per event), and sums the remaining offsets of every standby partition
    after each event. A listening worker of three spent a seventh of its CPU here
    while another published every admission (docs/performance.md, #15 part 3).

    This loop takes whatever is queued without a Task (``get_nowait``), waits with
    ``asyncio.timeout`` when the queue is empty, hands every event to the table's
    ``on_changelog_event`` at once as before (the limiter's view), and writes standby
    events in batches (``STANDBY_BATCH``, ``STANDBY_FLUSH_WITHIN``), keeping what is
    not written yet in ``unflushed`` for point reads. Recovery of active partitions,
    its end, the aborted-transaction check and standby readiness behave as in Faust;
    Faust flushes the buffers itself on revoke, on a restarted recovery and on stop,
    through ``flush_buffers`` below.
    """

    def flush_buffers(self) -> None:
        super().flush_buffers()
        for pending in self.tables.unflushed.values():
            pending.clear()

    def _check_standbys_ready(self) -> None:
        if (self._standbys_span is not None or not self.tables.standbys_ready) \
                and not self.standby_remaining_total():
            if self._standbys_span:
                finish_span(self._standbys_span)
                self._standbys_span = None
            self.tables.on_standbys_ready()

    @Service.task
    async def _slurp_changelogs(self) -> None:
        changelog_queue = self.tables.changelog_queue
        unflushed_of = self.tables.unflushed
        tp_to_table = self.tp_to_table
        active_tps, standby_tps = self.active_tps, self.standby_tps
        active_offsets, standby_offsets = self.active_offsets, self.standby_offsets
        active_events_received_at = self._active_events_received_at
        standby_events_received_at = self._standby_events_received_at
        buffers, buffer_sizes = self.buffers, self.buffer_sizes
        processing_times = self._processing_times
        oldest_unflushed: float | None = None  # when the oldest buffered event was read

        async def maybe_signal_recovery_end(timeout: bool = False, timeout_count: int = 0) -> None:
            if timeout and self.app.in_transaction and timeout_count > 1:
                await detect_aborted_tx()
            if self.in_recovery and not self.need_recovery():
                self.flush_buffers()
                self._set_recovery_ended()
                if self._actives_span is not None:
                    self._actives_span.set_tag("Actives-Ready", True)
                self.signal_recovery_end.set()

        async def detect_aborted_tx() -> None:
            offsets = self.active_offsets
            for tp, highwater in self.active_highwaters.items():
                if highwater is not None and offsets[tp] is not None and offsets[tp] < highwater:
                    if await self.app.consumer.position(tp) >= highwater:
                        log.info("Aborted tx until highwater for %s", tp)
                        offsets[tp] = highwater

        def flush() -> None:
            # after events only, as Faust checks standby readiness after each event
            nonlocal oldest_unflushed
            self.flush_buffers()
            oldest_unflushed = None
            self._check_standbys_ready()

        timeout_count = 0
        in_a_row = 0
        while not self.should_stop:
            try:
                self.signal_recovery_end.clear()
                if changelog_queue.empty():
                    in_a_row = 0
                    if oldest_unflushed is None:
                        wait = _IDLE_WAIT
                    else:
                        wait = oldest_unflushed + STANDBY_FLUSH_WITHIN - monotonic()
                        if wait <= 0:
                            flush()
                            continue
                    try:
                        async with asyncio.timeout(wait):
                            event = await changelog_queue.get()
                    except TimeoutError:
                        if self.should_stop:
                            return
                        if oldest_unflushed is not None:
                            flush()
                            continue
                        timeout_count += 1
                        await maybe_signal_recovery_end(timeout=True, timeout_count=timeout_count)
                        continue
                else:
                    event = changelog_queue.get_nowait()
                    in_a_row += 1
                    if in_a_row >= _YIELD_EVERY:
                        in_a_row = 0
                        await asyncio.sleep(0)
                now = monotonic()
                timeout_count = 0
                message = event.message
                tp = message.tp
                offset = message.offset
                bufsize = buffer_sizes.get(tp)
                is_active = False
                if tp in active_tps:
                    is_active = True
                    table = tp_to_table[tp]
                    offsets = active_offsets
                    if bufsize is None:
                        bufsize = buffer_sizes[tp] = table.recovery_buffer_size
                    active_events_received_at[tp] = now
                elif tp in standby_tps:
                    table = tp_to_table[tp]
                    offsets = standby_offsets
                    if bufsize is None:
                        bufsize = buffer_sizes[tp] = table.standby_buffer_size  # STANDBY_BATCH (tables.py)
                        standby_events_received_at[tp] = now
                else:  # Faust logs it and goes on with the previous event's table; skip it instead
                    log.warning("changelog event of an unassigned partition %s offset %s", tp, offset)
                    continue
                seen_offset = offsets.get(tp, None)
                if seen_offset is None or offset > seen_offset:
                    offsets[tp] = offset
                    buf = buffers[table]
                    buf.append(event)
                    unflushed_of[table][message.key] = message.value
                    if oldest_unflushed is None:
                        oldest_unflushed = now
                    await table.on_changelog_event(event)
                    if len(buf) >= bufsize or now - oldest_unflushed >= STANDBY_FLUSH_WITHIN:
                        flush()
                    if is_active:
                        now_after = monotonic()
                        last_processed_at = getattr(self, "_last_active_event_processed_at", None)
                        if last_processed_at is not None:
                            processing_times.append(now_after - last_processed_at)
                            if len(processing_times) > self.num_samples_required_for_estimate:
                                processing_times.popleft()
                        self._last_active_event_processed_at = now_after
                await maybe_signal_recovery_end()
            except Exception as exc:  # as Faust: the reader must go on
                log.warning("Error in recovery %r", exc)


class TableManager(FaustTableManager):
    """Faust's table manager with the changelog reader above (``App(TableManager=...)``)."""

    def __init__(self, app, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.unflushed: defaultdict = defaultdict(dict)  # table -> key -> raw: see ``unflushed``

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


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
