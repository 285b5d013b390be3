"""Agents and timers, registered on a Faust app for a Worker: merge deltas into the table, flush our own, expire idle buckets, trim the heap.

``updates`` carries whole lattice states keyed by bucket key (or an expiry
request), co-partitioned with the table. The ``merge`` agent is the only
writer of the table: read, join, write, with no ``await`` in between, so a
partition's updates apply in log order. Kafka's at-least-once delivery,
replays and reordering change nothing: the join is idempotent, commutative
and associative.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP

from bucketstream import crdt, heap, kafka_auth, metrics, patches, spill
from bucketstream.topics import (UPDATES_RETENTION_MS, read_to_end,
                                 updates_topic)
from bucketstream.worker import Worker

log = logging.getLogger(__name__)

#: An update value that asks the partition owner to delete a full, idle bucket.
#: (Encoded states start with a non-zero version byte, so this cannot clash.)
EXPIRE = b"\x00"

#: How long a producer keeps trying one batch (broker away) before it gives up;
#: the flusher then sends the keys again with its next flush (Limiter.on_sent),
#: the merge agent sends the batch again (``write_changelog``).
PUBLISH_TIMEOUT_MS = 30_000

#: The merge agent takes the update topic in batches of up to this many events,
#: or what arrived within MERGE_WITHIN seconds of the batch's first event
#: (patches.take_batches: no wake-up while none comes). States of one key within a batch
#: are joined first, so the table (and its changelog) is written once per key per
#: batch: three workers flushing a hot key every 10 ms make one changelog record, not three.
MERGE_BATCH = 1000
MERGE_WITHIN = 0.01

#: How long the broker may park the peer feed's fetch while no update comes. It
#: answers as soon as one byte is there, and the next fetch goes out as soon as the
#: feed has taken what came, so while updates flow the park adds nothing; idle, it
#: is the fetch round trips a worker makes: 10 a second, where 20 ms made 50 (a
#: third of an idle worker's CPU). The park does add to a partition's delay when a
#: fetch goes out without it, which aiokafka does once the fetched records were not
#: taken within the prefetch back-off: hence the back-off as long as the park, so
#: that only a stall of the event loop longer than it (not a GC pass or a merge
#: batch of a few ms, as with 5 ms) sends a fetch without the waiting partition.
#: (During the catch-up at start, which takes only the partitions still behind, 5 ms.)
PEER_FETCH_MAX_WAIT_MS = 100
PEER_PREFETCH_BACKOFF = PEER_FETCH_MAX_WAIT_MS / 1000

#: How far back a starting worker reads the update topic: deltas that the
#: table may not have merged yet (an owner that died, a rebalance).
PEER_LOOKBACK = 120.0

#: How often the loop-lag probe wakes (``bucketstream_event_loop_lag_seconds``).
LOOP_PROBE_INTERVAL = 0.05

#: Timers that walk many keys hand the event loop back after this many, so that no request
#: waits behind a whole sweep (about a millisecond of work: requests queue behind any
#: stretch of it, and a sweep's length follows the traffic).
SWEEP_SLICE = 250

#: The hold sweep (``Agents.sweep_holds``) runs when the first allowance refills, at most every
#: ``HOLD_SWEEP_INTERVAL`` and at least every ``HOLD_SWEEP_IDLE`` seconds: how long a held-back
#: state may outlive its allowance's refill. A state that stays is memory every request beside
#: it pays for: sweeping once a second, a worker taking 17,000 new users a second under C = R =
#: 10^6 (a refill of 20 µs) kept a second of them, and a new user cost it 1.5 to 2 µs more than
#: at 20 ms (docs/performance-journal.md, "The hold sweep's interval"). Waiting for what is
#: due, not waking every 20 ms, keeps an idle worker idle.
HOLD_SWEEP_INTERVAL = 0.02
HOLD_SWEEP_IDLE = 0.1

#: How long a stopping worker waits for its last deltas to reach Kafka.
SHUTDOWN_FLUSH_TIMEOUT = 10.0


async def _in_slices(step: Callable[[], object], more: Callable[[], bool]) -> None:
    """Run ``step`` (one slice of a sweep) until ``more()`` finds nothing left, handing the
    event loop back between slices: requests are answered between them, not after the sweep."""
    while True:
        step()
        if not more():
            return
        await asyncio.sleep(0)


class TableWrites:
    """The table writes of one merge batch: to this worker's RocksDB store at once,
    and kept in order per partition for the changelog (``write_changelog``).

    The merge agent writes the store and the changelog itself instead of through
    ``Table.__setitem__``: Faust sends every table write as its own changelog
    message (producer buffer, a task and a produce request each, and a RocksDB
    write of the persisted offset per acknowledged message), which was most of
    a merge's cost. Here a batch is one record batch per partition, and the
    agent waits for Kafka to have it before Faust acknowledges (and later
    commits) the updates it came from: an update whose merge the changelog
    does not have is read again by whoever owns the partition next.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self.by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}

    def read(self, partition: int, key: bytes) -> bytes | None:
        return patches.store_db(self.table, partition).get(key)

    def put(self, partition: int, key: bytes, raw: bytes | None) -> None:
        """Write (``raw``) or delete (``None``) ``key`` in the partition's store; queue it for the changelog."""
        db = patches.store_db(self.table, partition)
        if raw is None:
            db.delete(key)
        else:
            db.put(key, raw)
        self.by_partition.setdefault(partition, []).append((key, raw))


def apply_expire(worker: Worker, key: bytes, now: float, partition: int, writes: TableWrites) -> str:
    """An expiry request: delete ``key`` if its bucket is still full and idle (or of no current rule)."""
    current_raw = writes.read(partition, key)
    if current_raw is None:
        return "absent"
    policy = worker.rules.policy_for_key(key)
    # a key of a rule version no current rule has is never read again: drop it
    if policy is not None and not worker.is_stale(key, crdt.decode(current_raw), now):
        return "kept"  # touched since the sweep looked: not idle after all
    writes.put(partition, key, None)
    worker.limiter.on_replica_changed(key, None, now)
    return "expired"


def merge_state(worker: Worker, key: bytes, delta: crdt.BucketState, now: float, partition: int,
                writes: TableWrites) -> str:
    """Read, join, write: no await in between (the agent is the table's only writer)."""
    current_raw = writes.read(partition, key)
    current = crdt.decode(current_raw) if current_raw is not None else crdt.BucketState()
    merged = crdt.join(current, delta)
    if merged == current:
        return "unchanged"  # a replay or a state we already had: no changelog write
    raw = crdt.encode(merged)
    writes.put(partition, key, raw)
    worker.limiter.on_replica_changed(key, raw, now)
    return "merged"


def apply_batch(worker: Worker, table: faust.Table, events, now: float) -> TableWrites:
    """Apply a batch of update-topic events in log order, joining each key's states first.

    An expiry request is a barrier for its key: what came before it is merged
    before it, what came after is merged after it. Stale states are dropped one
    by one. Each key is written to the partition its update came from (the
    update topic is co-partitioned with the table).
    """
    writes = TableWrites(table)
    joined: dict[bytes, crdt.BucketState] = {}
    source: dict[bytes, int] = {}  # key -> the partition of its updates
    results: dict[str, int] = {}
    lags = worker.limiter.update_lags

    def count(result: str, n: int = 1) -> None:
        results[result] = results.get(result, 0) + n

    for event in events:
        key, value, message = event.key, event.value, event.message
        lags.append(now - message.timestamp)
        if not value:
            count("ignored")
            continue
        try:
            if value == EXPIRE:
                if key in joined:
                    count(merge_state(worker, key, joined.pop(key), now, message.partition, writes))
                count(apply_expire(worker, key, now, message.partition, writes))
                continue
            delta = crdt.decode(value)
        except crdt.CodecError as exc:
            count("malformed")
            log.error("skipping malformed update for key %r at %s: %s", key, message.tp, exc)
            continue
        if worker.is_stale(key, delta, now):
            count("stale")
            continue
        source[key] = message.partition
        prior = joined.get(key)
        if prior is None:
            joined[key] = delta
        else:
            joined[key] = crdt.join(prior, delta)
            count("coalesced")
    for key, state in joined.items():
        try:
            count(merge_state(worker, key, state, now, source[key], writes))
        except crdt.CodecError as exc:  # the table's value, not the update, is garbage
            count("malformed")
            log.error("table value for key %r is not a bucket state: %s", key, exc)
    for result, n in results.items():
        metrics.UPDATES_MERGED.labels(result).inc(n)
    return writes


async def write_changelog(producer: AIOKafkaProducer, table: faust.Table, writes: TableWrites) -> None:
    """Send a batch's table writes to the changelog, and return once Kafka has all of them.

    A partition whose send fails (broker away longer than the producer's
    timeout) is sent again, whole and in order, until Kafka has it: the store
    already holds those values, and the updates they came from stay
    unacknowledged meanwhile. A duplicate changelog record is harmless.
    """
    topic = table.changelog_topic_name
    await asyncio.gather(*(_write_partition(producer, table, topic, p, records)
                           for p, records in writes.by_partition.items()))


async def _write_partition(producer: AIOKafkaProducer, table: faust.Table, topic: str, partition: int,
                           records: list[tuple[bytes, bytes | None]]) -> None:
    last = await _send_until_taken(producer, topic, partition, records)
    # what Faust's own changelog callback keeps: the offset of the last record the store
    # has, from which a restart (or a later standby) resumes reading the changelog
    table.data.set_persisted_offset(TP(topic, partition), last)


async def _send_until_taken(producer: AIOKafkaProducer, topic: str, partition: int,
                            records: list[tuple[bytes, bytes | None]]) -> int:
    """``_send_records``, again and again (backing off up to 5 s) until Kafka has them all."""
    wait = 0.1
    while True:
        try:
            return await _send_records(producer, topic, partition, records)
        except Exception as exc:  # noqa: BLE001 - Kafka does not have them: send them again
            metrics.PUBLISH_FAILURES.inc(len(records))
            log.warning("sending %d record(s) to %s[%d] failed: %r; sending them again",
                        len(records), topic, partition, exc)
            await asyncio.sleep(wait)
            wait = min(2 * wait, 5.0)


async def _send_records(producer: AIOKafkaProducer, topic: str, partition: int,
                        records: list[tuple[bytes, bytes | None]]) -> int:
    """Send the records in as few batches as they fit in; returns the offset of the last one."""
    futures, counts = [], []
    for builder, keys in _fill_batches(producer, records):
        if builder is None:
            raise ValueError(f"changelog record of key {keys[0]!r} does not fit a record batch")
        futures.append(await producer.send_batch(builder, topic, partition=partition))
        counts.append(len(keys))
    metas = await asyncio.gather(*futures)
    return metas[-1].offset + counts[-1] - 1


def _fill_batches(producer: AIOKafkaProducer, records: list[tuple[bytes, bytes | None]]):
    """Yield ``(batch, keys)``: the records, in order, appended to as few record batches as
    they fit in; a record larger than an empty batch comes alone as ``(None, [key])``."""
    i = 0
    while i < len(records):
        builder = producer.create_batch()
        keys = []
        while i < len(records) and builder.append(key=records[i][0], value=records[i][1], timestamp=None):
            keys.append(records[i][0])
            i += 1
        if not keys:
            keys.append(records[i][0])
            i += 1
            yield None, keys
        else:
            yield builder, keys


class Agents:
    """The agents, tasks and timers of one worker (``register``), and what they share."""

    def __init__(self, app: faust.App, worker: Worker, table: faust.Table) -> None:
        self.app = app
        self.worker = worker
        self.limiter = worker.limiter
        self.settings = settings = worker.settings
        self.table = table
        self.updates = app.topic(
            updates_topic(settings),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            replicas=settings.topic_replication,
            internal=True,  # declared by the app: right partition count, no broker auto-creation
            retention=UPDATES_RETENTION_MS / 1000,
            deleting=True,
        )
        self._admin: AIOKafkaAdminClient | None = None
        self._flush_task: asyncio.Task | None = None
        self._publisher: AIOKafkaProducer | None = None  # the flusher's, while it runs
        #: key -> when the sweep asked to expire it: not asked again until the agent had
        #: time to handle it (a lagging agent once got every stale key again each sweep,
        #: which lagged it further); bounded by the table's keys, pruned every sweep
        self._expiry_asked: dict[bytes, float] = {}
        self._sweep_tick = 0  # runs of the expiry sweep: which slice of the partitions it reads
        #: glibc's malloc_trim (bucketstream.heap); None when off or not there
        self._trim = heap.trimmer() if settings.heap_trim_interval else None
        threshold = settings.heap_mmap_threshold_kb << 10
        if threshold and not heap.set_mmap_threshold(threshold):
            log.info("this C library has no mallopt: BUCKETSTREAM_HEAP_MMAP_THRESHOLD_KB has no effect")
            threshold = 0
        metrics.HEAP_MMAP_THRESHOLD.set(threshold)

    def _producer(self, role: str) -> AIOKafkaProducer:
        """A dedicated producer: ``acks=all``, sends at once, gives up a batch after PUBLISH_TIMEOUT_MS."""
        return AIOKafkaProducer(
            **kafka_auth.client_kwargs(self.settings),
            client_id=f"{self.settings.node_id}-{role}",
            acks="all",
            linger_ms=0,
            request_timeout_ms=PUBLISH_TIMEOUT_MS,
        )

    # -- the merge agent ---------------------------------------------------------------------
    async def merge(self, stream) -> None:
        """Join every update into the table (the table's only writer), a batch at a time."""
        producer = self._producer("changelog")
        await producer.start()
        try:
            async for events in patches.take_batches(stream, MERGE_BATCH, MERGE_WITHIN):
                writes = apply_batch(self.worker, self.table, events, self.worker.clock())
                if writes.by_partition:
                    # before the next batch, so before Faust acknowledges these updates
                    await write_changelog(producer, self.table, writes)
        finally:
            await producer.stop()

    # -- the peer feed -----------------------------------------------------------------------
    async def peer_feed(self) -> None:
        """Read every partition of the update topic and join each state into the local view.

        Not a group consumer: every worker reads everything, so what one worker
        admits reaches the others in one Kafka hop, and keeps reaching them while
        the partition's owner is dead or a rebalance is moving it. The table
        (through the agent and the changelog) stays the durable, merged record.
        """
        settings, limiter, worker = self.settings, self.limiter, self.worker
        consumer = AIOKafkaConsumer(
            **kafka_auth.client_kwargs(settings),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=PEER_FETCH_MAX_WAIT_MS,
            client_id=f"{settings.node_id}-peer-feed",
            key_deserializer=None,
            value_deserializer=None,
        )
        await consumer.start()
        # the catch-up below takes only the partitions still behind: the others' records wait
        patches.prefetch_backoff(consumer)
        lags = limiter.peer_lags
        clock = worker.clock

        def take(tp: TopicPartition, records: list) -> None:
            now = clock()
            # one sample per partition fetch: when its newest record was produced
            lags.append(now - records[-1].timestamp / 1000)
            for record in records:
                if not record.value or record.value == EXPIRE:
                    continue
                try:
                    state = crdt.decode(record.value)
                except crdt.CodecError:
                    continue  # the agent logs it
                if not worker.is_stale(record.key, state, now):
                    limiter.on_peer_state(record.key, state, now)
                    metrics.PEER_STATES.inc()

        try:
            await self.publish_spilled()  # before the end offsets below: the view reads them back before serving
            tps = [TopicPartition(updates_topic(settings), p) for p in range(settings.partitions)]
            consumer.assign(tps)
            await self.refresh_worker_count()  # the burst cap needs the count before the first request
            since = int((clock() - PEER_LOOKBACK) * 1000)
            starts = await consumer.offsets_for_times({tp: since for tp in tps})
            ends = await consumer.end_offsets(tps)
            merged = await self.merged_up_to()
            firsts = await consumer.beginning_offsets(tps)
            for tp in tps:
                start = starts.get(tp)
                offset = start.offset if start is not None else ends[tp]
                # From where the table stops, however long ago: a ready worker's view then holds
                # every update the table lacks, not only the last PEER_LOOKBACK seconds. A partition
                # the agents never committed is read from its start, as the agent will read it
                # (consumer_auto_offset_reset="earliest"), not taken as merged.
                consumer.seek(tp, min(offset, merged.get(tp, firsts[tp])))
            await read_to_end(consumer, tps, take)
            patches.prefetch_backoff(consumer, PEER_PREFETCH_BACKOFF)  # from here on every fetch takes all
            worker.mark_peer_feed_ready()
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    if records:
                        take(tp, records)
        finally:
            await consumer.stop()

    # -- the flusher ---------------------------------------------------------------------------
    async def flush_deltas(self) -> None:
        """Publish this worker's whole state once per touched key per flush interval.

        Straight through a dedicated aiokafka producer, one record batch per
        partition per flush (not Faust's one-message-at-a-time producer buffer);
        each batch's send future says whether Kafka has it (``acks=all``), and a
        failed batch's keys go out again with the next flush.
        """
        self._flush_task = asyncio.current_task()
        topic = self.updates.get_topic_name()
        producer = self._producer("publisher")
        await producer.start()
        self._publisher = producer
        try:
            while True:
                await asyncio.sleep(self.settings.flush_interval)
                await self._publish(producer, topic)
        finally:
            self._publisher = None
            # stopping (SIGTERM, a rolling restart): what was admitted since the last
            # flush goes out too, and stop() waits for Kafka to have every batch
            failure: BaseException | None = None
            try:
                await asyncio.wait_for(self._final_publish(producer, topic), SHUTDOWN_FLUSH_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - broker away at shutdown: keep the states on disk
                failure = exc
            if failure is not None or self.limiter.unsettled:
                self.keep_unpublished(failure)
                # close it (what Kafka did not take is on disk now); give up on its pending batches
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 1.0)

    async def publish_before_stopping(self) -> None:
        """The first step of a worker's stop (``BucketApp.on_stop``), before Faust stops its
        consumer: admit nothing more (503), then end the flusher, whose last publish holds
        every admission (or, with Kafka away, keeps them on disk: ``keep_unpublished``).

        First, because the rest of Faust's stop may never end while the broker is
        away, and the flusher's own end would otherwise come after it.
        """
        self.worker.mark_stopping()
        task = self._flush_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=SHUTDOWN_FLUSH_TIMEOUT + 5.0)

    async def _final_publish(self, producer: AIOKafkaProducer, topic: str) -> None:
        # a clean stop keeps nothing to itself: held-back admissions go out with the last flush
        self.limiter.release_held(self.worker.clock())
        await self._publish(producer, topic)
        await producer.stop()
        if self.limiter.own_keys and not self.limiter.unsettled:
            log.info("stopped: last deltas of %d key(s) published", self.limiter.own_keys)

    def keep_unpublished(self, failure: BaseException | None) -> None:
        """Kafka did not take this worker's last states: keep them in its data directory,
        for the next process started on it to publish (``publish_spilled``)."""
        path = spill.path_in(self.settings.data_dir)
        states = self.limiter.own_encoded()
        if not states:
            return
        try:
            held = spill.write(path, states)
        except (OSError, spill.SpillError) as exc:
            log.error("stopping with %d key(s) not published (%r), and they could not be kept in %s: %r; "
                      "those admissions are lost from the merged state", len(states), failure, path, exc)
            return
        log.error("stopping with %d key(s) not published (%r): kept in %s (%d key(s)); the next worker "
                  "started with this data directory publishes them before it serves", len(states), failure,
                  path, held)

    async def publish_spilled(self) -> None:
        """Publish what the last process on this data directory could not, then delete the file.

        Runs before the peer feed reads the update topic's end, so this worker's
        view holds those states before it serves (it is not ready until then).
        Kafka is reachable (the worker got this far), but a send that fails is
        tried again until Kafka has the states: deleting the file before that would
        lose them.
        """
        path = spill.path_in(self.settings.data_dir)
        states = spill.read(path)
        if not states:
            return
        topic = self.updates.get_topic_name()
        producer = self._producer("spill")
        await producer.start()
        try:
            await asyncio.gather(*(_send_until_taken(producer, topic, p, records)
                                   for p, records in self._by_partition(states.items()).items()))
        finally:
            await producer.stop()
        path.unlink()
        log.warning("published %d state(s) the last process on %s could not, and deleted the file",
                    len(states), self.settings.data_dir)

    async def _publish(self, producer: AIOKafkaProducer, topic: str) -> None:
        batch = self.limiter.take_dirty(self.worker.clock())
        if not batch:
            return
        metrics.DELTAS_FLUSHED.inc(len(batch))
        await asyncio.gather(*(self._send_partition(producer, topic, p, records)
                               for p, records in self._by_partition(batch).items()))

    def _by_partition(self, records) -> dict[int, list[tuple[bytes, bytes]]]:
        """(key, value) pairs grouped by the partition of their key, in order."""
        out: dict[int, list[tuple[bytes, bytes]]] = {}
        partition_for = self.worker.partition_for
        for key, value in records:
            out.setdefault(partition_for(key), []).append((key, value))
        return out

    async def _send_partition(self, producer: AIOKafkaProducer, topic: str, partition: int,
                              records: list[tuple[bytes, bytes]]) -> None:
        """Send the records in as few batches as they fit in; never raises (failures resend)."""
        limiter, clock = self.limiter, self.worker.clock
        for builder, keys in _fill_batches(producer, records):
            if builder is None:  # a record larger than an empty batch: aiokafka's max_batch_size is far above ours
                limiter.on_sent(keys, True, clock())
                log.error("state of key %r does not fit a record batch", keys[0])
                continue
            try:
                future = await producer.send_batch(builder, topic, partition=partition)
            except Exception as exc:  # noqa: BLE001 - no room for it within the timeout: resend
                log.warning("could not queue %d update(s) for %s[%d]: %r; sending them again", len(keys), topic,
                            partition, exc)
                limiter.on_sent(keys, True, clock())
                continue
            future.add_done_callback(lambda f, keys=keys: self._sent(f, keys))

    def _sent(self, future: asyncio.Future, keys: list[bytes]) -> None:
        failed = future.cancelled() or future.exception() is not None
        if failed:
            metrics.PUBLISH_FAILURES.inc(len(keys))
            log.warning("publishing %d update(s) failed: %r; sending them again", len(keys),
                        None if future.cancelled() else future.exception())
        self.limiter.on_sent(keys, failed, self.worker.clock())

    # -- timers -------------------------------------------------------------------------------
    async def resend_unconfirmed(self) -> None:
        """The safety net: send again what Kafka acknowledged but never showed (see Limiter.resend_stale);
        and publish deferred states whose wait is over (Limiter.publish_due).

        Deferred keys go out once a second, not as each comes due: in one record batch per
        partition rather than a trickle, and a worker's records end with a gap the agents
        catch up in (published every 20 ms, they kept the three-worker soak's agents from
        ever being seen caught up within a second of the load's end)."""
        now = self.worker.clock()
        limiter = self.limiter
        limiter.resend_stale(now)
        holds = limiter.holds
        if holds is None:
            return
        # as many keys come due each second as users were deferred a while before: a slice at a time
        await _in_slices(lambda: limiter.publish_due(now, SWEEP_SLICE), lambda: holds.any_due(now))

    async def hold_sweeper(self) -> None:
        """``sweep_holds`` when the first allowance refills (``Holds.next_refill``), within
        ``HOLD_SWEEP_INTERVAL`` and ``HOLD_SWEEP_IDLE``: a task, not a Faust timer, which would
        cost each of these frequent runs its drift and sensor bookkeeping."""
        holds = self.limiter.holds
        if holds is None:
            return
        clock = self.worker.clock
        while True:
            wait = holds.next_refill() - clock()
            await asyncio.sleep(min(HOLD_SWEEP_IDLE, max(wait, HOLD_SWEEP_INTERVAL)))
            await self.sweep_holds()

    async def sweep_holds(self) -> None:
        """Forget held-back states whose allowance refilled (Limiter.drop_refilled)."""
        now = self.worker.clock()
        limiter = self.limiter
        holds = limiter.holds
        if holds is None:
            return
        # as many allowances refill at a time as users arrived a while before: a slice at a time
        await _in_slices(lambda: limiter.drop_refilled(now, SWEEP_SLICE), lambda: holds.any_refilled(now))

    async def trim_heap(self) -> None:
        """Give the C allocator's free pages back to the system (bucketstream.heap). Off the event
        loop: the call walks every free chunk of every heap, longer the larger they are."""
        released = await asyncio.get_running_loop().run_in_executor(None, self._trim)
        metrics.HEAP_TRIMS.labels("true" if released else "false").inc()

    async def expire_idle(self) -> None:
        """Ask the owner to delete buckets of our active partitions that are full and idle.

        Each run reads one slice of the active partitions (``Worker.sweep_slice``), so a
        key is read once per ``sweep_period()`` runs, not at every one. The requests go
        out as the flusher's updates do, one record batch per partition, and a key asked
        for is not asked again for three runs.
        """
        now = self.worker.clock()
        rules, worker, asked = self.worker.rules, self.worker, self._expiry_asked
        retry = 3 * self.settings.expire_check_interval
        for key in [k for k, when in asked.items() if now - when > retry]:
            del asked[key]
        tick, self._sweep_tick = self._sweep_tick, self._sweep_tick + 1
        stale = []
        read = 0
        for partition in worker.sweep_slice(worker.active_partitions(), tick):
            for key, raw in patches.partition_items(self.table, partition):
                read += 1
                if read % SWEEP_SLICE == 0:
                    await asyncio.sleep(0)
                if key in asked:
                    continue
                try:
                    if rules.policy_for_key(key) is None or worker.is_stale(key, crdt.decode(raw), now):
                        stale.append(key)
                except crdt.CodecError:
                    pass  # garbage: the agent logs it when it meets it
        metrics.EXPIRY_KEYS_READ.inc(read)  # with the run, no await between: read together, they agree
        metrics.EXPIRY_SWEEPS.inc()
        producer = self._publisher
        if not stale or producer is None:
            return
        for key in stale:
            asked[key] = now
        topic = self.updates.get_topic_name()
        await asyncio.gather(*(_send_until_taken(producer, topic, p, records)
                               for p, records in self._by_partition((k, EXPIRE) for k in stale).items()))
        log.info("asked to expire %d idle buckets", len(stale))

    async def count_workers(self) -> None:
        await self.refresh_worker_count()

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**kafka_auth.client_kwargs(self.settings), request_timeout_ms=5000)
            await admin.start()
            self._admin = admin
        return self._admin

    async def merged_up_to(self) -> dict[TopicPartition, int]:
        """The merge agents' committed offsets on the update topic: the table has merged every
        update before them; a partition missing here was never committed (read it all).

        Asked until Kafka answers (the worker is not ready meanwhile): without them the
        peer feed cannot know what the table lacks, and a guess would be a fuller bucket.
        """
        wait = 0.5
        while True:
            try:
                admin = await self._admin_client()
                offsets = await asyncio.wait_for(admin.list_consumer_group_offsets(self.settings.app_id), 5)
                break
            except Exception as exc:  # noqa: BLE001 - the coordinator may still be moving: ask again
                log.warning("could not read the merge agents' committed offsets (%r); asking again in %.1f s",
                            exc, wait)
                await asyncio.sleep(wait)
                wait = min(2 * wait, 5.0)
        topic = updates_topic(self.settings)
        return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}

    async def refresh_worker_count(self) -> None:
        """How many workers share the limits (members of the consumer group), for the burst cap.

        While Kafka cannot be asked, the last count stays: the cap keeps working.
        """
        try:
            admin = await self._admin_client()
            (response,) = await asyncio.wait_for(admin.describe_consumer_groups([self.settings.app_id]), 5)
            members = len(response.groups[0][5]) if response.groups else 0
            if members:
                self.limiter.live_workers = members
        except Exception as exc:  # noqa: BLE001 - a count we cannot refresh keeps its last value
            log.debug("could not count the workers: %s", exc)

    async def watch_event_loop(self) -> None:
        """Measure how late the event loop wakes a short sleep: the stretches of other
        work that every request, flush and merge waits behind (the replication
        delay's tail), next to the collector's pauses (``metrics.time_gc``)."""
        metrics.time_gc()
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_PROBE_INTERVAL)
            metrics.LOOP_LAG.observe(max(0.0, loop.time() - before - LOOP_PROBE_INTERVAL))


def register(app: faust.App, worker: Worker, table: faust.Table) -> Agents:
    """Declare the update topic, the merge agent, the tasks and the timers on ``app``."""
    a = Agents(app, worker, table)
    app.agent(a.updates, name="bucketstream.agents.merge")(a.merge)
    app.task(a.peer_feed)
    app.task(a.flush_deltas)
    app.task(a.watch_event_loop)
    app.task(a.hold_sweeper)
    app.timer(5.0, name="bucketstream.agents.count_workers")(a.count_workers)
    app.timer(1.0, name="bucketstream.agents.resend_unconfirmed")(a.resend_unconfirmed)
    app.timer(worker.settings.expire_check_interval, name="bucketstream.agents.expire_idle")(a.expire_idle)
    if a._trim is not None:
        app.timer(worker.settings.heap_trim_interval, name="bucketstream.agents.trim_heap")(a.trim_heap)
    elif worker.settings.heap_trim_interval:
        log.info("this C library has no malloc_trim: BUCKETSTREAM_HEAP_TRIM_INTERVAL has no effect")
    return a
