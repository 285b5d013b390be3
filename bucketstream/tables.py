"""The bucket table and this worker's view of it.

``buckets``: key = bucket key (bytes), value = an encoded ``BucketState``.
Partitioned by key like the update topic (same partition count, raw key
bytes, Kafka's default partitioner), changelog on a compacted topic, RocksDB
store through rocksdict. Only the merge agent writes it (``agents.py``).

Every worker holds every partition, active or standby
(``table_standby_replicas`` in ``app.py``), and applies standby changelog
events one at a time (``standby_buffer_size=1``), so a point read from a web
view finds any key locally. Every change of the replica, from the changelog or
from the agent's own write, goes to ``limiter.on_replica_changed``.
"""

from __future__ import annotations

import functools
import gc
import time

from aiokafka.partitioner import murmur2
from faust.types import EventT

from bucketstream import crdt, metrics
from bucketstream.app import SLOT, app, settings
from bucketstream.local import BOTTOM, Limiter
from bucketstream.rules import Rules

#: The rules every decision resolves against (validated at start-up).
RULES = Rules.from_settings(settings.capacity, settings.rate, settings.limits)


async def _on_changelog_event(event: EventT) -> None:
    now = time.time()
    limiter.changelog_lags.append(now - event.message.timestamp)
    limiter.on_replica_changed(event.key, event.value, now)


buckets = app.Table(
    "buckets",
    partitions=settings.partitions,
    key_type=bytes,
    value_type=bytes,
    standby_buffer_size=1,
    on_changelog_event=_on_changelog_event,
    help="token buckets: bucket key -> encoded CRDT state",
)


@functools.lru_cache(maxsize=1 << 16)
def partition_for(key: bytes) -> int:
    """Kafka's default partitioner, as the producer and the table use it.

    Cached: a new key is hashed on its first read and again when it is
    published a flush later, and aiokafka's murmur2 is pure Python (10 % of a
    worker's CPU at unique-user load in the bench profile).
    """
    return (murmur2(key) & 0x7FFFFFFF) % settings.partitions


def store_for(partition: int):
    """This worker's RocksDB database (a ``rocksdict.Rdict``) of one table partition, opened on first use."""
    return buckets.data._db_for_partition(partition)


def read_stored(key: bytes) -> bytes | None:
    """The stored value of ``key`` in this worker's replica: one RocksDB point read
    in the key's own partition (Faust's ``Table.get`` outside an agent tries every
    partition's store, each with a bloom-filter probe and a read)."""
    db = buckets.data._dbs.get(partition_for(key))
    if db is None:  # partition not opened yet: let Faust look
        return buckets.get(key)
    return db.get(key)


def _read(key: bytes) -> bytes | None:
    """The replica read behind the limiter's cache (only on a cache miss).

    A key that is absent but whose rule has a recorded previous version starts
    from the level of the same bucket under that version (``crdt.carry_over``),
    so a rule change never hands out a fresh burst. The previous version's
    bucket is read through the limiter (this worker's whole view of it, peers'
    unmerged spending included; a chain of changes carries over step by step).
    Once the previous version was replaced longer ago than its buckets take to
    expire, there is nothing left to carry and no extra read is made.
    """
    raw = read_stored(key)
    if raw is not None:
        return raw
    found = RULES.predecessor(key)
    if found is None:
        return None
    old_key, old_policy, policy, replaced = found
    now = time.time()
    if now - replaced > max(settings.expire_after, old_policy.rule.capacity / old_policy.rule.rate):
        return None
    old = limiter.view(old_key)
    if old == BOTTOM:
        return None
    carried = crdt.carry_over(old, old_policy.rule, policy.rule, now)
    return None if carried == BOTTOM else crdt.encode(carried)


def _carry_forward(key: bytes, now: float) -> None:
    """``key``'s view grew; if it is a bucket of a rule's previous version whose
    successor this worker has already read (and carried over, in ``_read``), join
    the carry-over of what it knows now into the successor: a worker that carried
    a bucket over before the old bucket's last spending reached it does not keep
    the fuller level. Sound because a carry-over is a W-only state: more
    spending known makes a larger W, and the join keeps the larger."""
    found = RULES.successor(key)
    if found is None:
        return
    new_key, old_policy, policy = found
    if not limiter.is_cached(new_key):
        return  # read later through _read, which carries over then
    carried = crdt.carry_over(limiter.view(key), old_policy.rule, policy.rule, now)
    if carried != BOTTOM:
        limiter.on_peer_state(new_key, carried, now)


limiter = Limiter(SLOT, _read, cache_size=settings.cache_keys, on_delay=metrics.REPLICATION_DELAY.observe,
                  on_learned=_carry_forward)
metrics.KEYS.labels("own_unreflected").set_function(lambda: limiter.own_keys)
metrics.KEYS.labels("cached").set_function(lambda: limiter.cached_keys)


_ready = False
_peer_feed_ready = False
_stopping = False


def mark_peer_feed_ready() -> None:
    """The update-topic reader has caught up with what was there when it started."""
    global _peer_feed_ready
    _peer_feed_ready = True


def mark_stopping() -> None:
    """The worker is stopping: from now on it admits nothing (503, like a worker that is
    not ready yet), so the last publish it is about to make holds every admission."""
    global _ready, _stopping
    _stopping = True
    _ready = False
    metrics.READY.set(0)


def is_stopping() -> bool:
    return _stopping


def tables_ready() -> bool:
    """True once this worker's replicas (active and standby) have been recovered
    and it has read the recent update topic (deltas the table may not have yet).

    Latched: a later rebalance does not take a worker out of service; its
    RocksDB replicas stay on disk and keep answering while partitions move.
    """
    global _ready
    if not _ready and not _stopping and _peer_feed_ready and app.tables.actives_ready and (
        app.tables.standbys_ready or _standbys_caught_up()
    ):
        _ready = True
        _settle_heap()
        metrics.READY.set(1)
    return _ready


def _settle_heap() -> None:
    """Take what is alive when the worker becomes ready out of the collector's full passes.

    Faust, aiokafka, aiohttp and their modules are some hundred thousand objects
    that live as long as the process; every full (generation 2) collection
    walked them all: 30-130 ms pauses every second or two under load, which
    were most of the replication delay's p99. Frozen, a full collection only
    walks what was allocated since.
    """
    gc.collect()
    gc.freeze()


def _standbys_caught_up() -> bool:
    # Faust flips ``standbys_ready`` only after reading a standby event, so it
    # stays False forever when the standby partitions are empty or already
    # current; compare offsets with the highwaters it recorded instead.
    recovery = app.tables.recovery
    offsets = recovery.standby_offsets
    return all(offsets.get(tp, -1) >= hw for tp, hw in recovery.standby_highwaters.items())
