"""The Worker: what one worker process holds, built from Settings and a clock; it makes no I/O of its own.

Its slot (CRDT node id), rules, limiter, readiness and recovery stats. The
table, agents and web routes (``tables``, ``agents``, ``web``) are registered
on a Faust app *for* a worker and reach its state only through it; ``app``
builds the worker and the app from settings. The worker reads the table
through ``read_stored``, asks whether Faust's recovery is done through
``tables_recovered`` and what RocksDB holds in memory through ``store_memory``,
all set by ``tables.register``.
"""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

from bucketstream import crdt, keyhash, metrics
from bucketstream.hold import HoldRule, Holds
from bucketstream.local import BOTTOM, Limiter
from bucketstream.recovery import BulkStats
from bucketstream.rules import Rules
from bucketstream.settings import Settings

#: The expiry sweep reads a key at most about this many times (plus one) per expiry horizon
#: (``Worker.sweep_period``).
SWEEPS_PER_HORIZON = 8


async def _no_keys(partitions: Iterable[int]) -> int:
    return 0


class Worker:
    """One worker process's state: what its requests, agents and timers share."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time, slot: int | None = None) -> None:
        self.settings = settings
        self.clock = clock
        #: This process's CRDT slot: fresh at every start, so a restarted worker never
        #: counts from zero against the counter it had before (docs/design.md, node identity).
        self.slot = secrets.randbits(63) if slot is None else slot
        #: The rules every decision resolves against (validated here, at start-up).
        self.rules = Rules.from_settings(settings.capacity, settings.rate, settings.limits)
        self.burst_cap = settings.burst_cap
        self.limiter = Limiter(self.slot, self._read, cache_size=settings.cache_keys,
                               max_unconfirmed=settings.max_unconfirmed_keys,
                               on_delay=metrics.REPLICATION_DELAY.observe, on_learned=self._carry_forward,
                               holds=Holds(HoldRule(settings.hold_share, settings.hold_burst, settings.hold_floor,
                                                    settings.hold_keys, settings.hold_defer,
                                                    settings.hold_defer_seconds)))
        self.bulk_recovery = BulkStats()
        #: The table's stored value of a key (tables.register sets it).
        self.read_stored: Callable[[bytes], bytes | None] = lambda key: None
        #: Whether Faust has recovered this worker's active and standby partitions (tables.register).
        self.tables_recovered: Callable[[], bool] = lambda: False
        #: RocksDB's memory beside Python's, in bytes by kind (tables.register).
        self.store_memory: Callable[[], dict[str, int]] = dict
        #: The keys stored in some partitions of the table, counted without stalling the loop (tables.register).
        self.count_keys: Callable[[Iterable[int]], Awaitable[int]] = _no_keys
        #: The table partitions this worker owns now (tables.register).
        self.active_partitions: Callable[[], list[int]] = list
        self._ready = False
        self.peer_feed_ready = False
        self.stopping = False
        metrics.KEYS.labels("own_unreflected").set_function(lambda: self.limiter.waiting_keys)
        metrics.KEYS.labels("cached").set_function(lambda: self.limiter.cached_keys)
        metrics.KEYS.labels("held").set_function(lambda: self.limiter.held_keys)
        metrics.KEYS.labels("deferred").set_function(lambda: self.limiter.deferred_keys)
        metrics.HELD.set_function(lambda: self.limiter.holds.held if self.limiter.holds else 0)
        metrics.DEFERRED.set_function(lambda: self.limiter.holds.deferred if self.limiter.holds else 0)

    # -- keys and expiry ---------------------------------------------------------------------
    def partition_for(self, key: bytes) -> int:
        """Kafka's default partitioner, as the producer and the table use it.

        Not cached: it runs on the limiter's cache misses, mostly users seen for the
        first time, where a cache of hashes would only add a miss and an eviction,
        and when a key is published (with holding back, only keys near their limit).
        """
        return keyhash.partition(key, self.settings.partitions)

    def expire_horizon(self, rule: crdt.Rule) -> float:
        """How long a bucket must have been full before it may be deleted (≥ C/r)."""
        return max(self.settings.expire_after, rule.capacity / rule.rate)

    def is_stale(self, key: bytes, state: crdt.BucketState, now: float) -> bool:
        """A state that has been full for longer than the expiry horizon.

        It cannot change any answer on its own (it evaluates to a full bucket), but
        joined with a bucket re-created after an expiry it would count consumption
        that the expiry already forgave (see the caveat in ``crdt``). So it is
        dropped, by the agent and by the peer feed alike. A key of a rule version
        this worker does not know is never called stale (it cannot be evaluated).
        """
        policy = self.rules.policy_for_key(key)
        return policy is not None and crdt.is_full(state, policy.rule, now - self.expire_horizon(policy.rule))

    def sweep_period(self) -> int:
        """``k``: the expiry sweep's ticks per pass over this worker's active partitions.

        A sweep that read every key at every tick would read each key ``h / interval``
        times before it may go (60 with the defaults): a key that enters the table would
        cost its owner more in sweeps than in merges, and a table of many users a share
        of a core for as long as they stay. A pass spread over ``k`` ticks, a slice of the
        partitions each, reads a key once per ``k · interval``: about
        ``SWEEPS_PER_HORIZON`` times per ``expire_after`` (the shortest horizon), and
        delays a deletion by at most ``k · interval ≤ max(interval, expire_after /
        SWEEPS_PER_HORIZON)`` (docs/design.md, 4.8). The slices are partitions, so ``k``
        is at most the partition count.
        """
        s = self.settings
        per_pass = s.expire_after / SWEEPS_PER_HORIZON
        k = int(per_pass // s.expire_check_interval)
        if k * s.expire_check_interval > per_pass:  # a rounded product an ulp over
            k -= 1
        return max(1, min(s.partitions, k))

    def sweep_slice(self, actives: Iterable[int], tick: int) -> list[int]:
        """The active partitions the expiry sweep reads at its ``tick``-th run: each one once
        in any ``sweep_period()`` consecutive ticks."""
        k = self.sweep_period()
        return sorted(p for p in actives if p % k == tick % k)

    # -- the replica read behind the limiter's cache -----------------------------------------
    def _read(self, key: bytes) -> bytes | None:
        """The replica read behind the limiter's cache (only on a cache miss).

        A key that is absent but whose rule has a recorded previous version starts
        from the level of the same bucket under that version (``crdt.carry_over``),
        so a rule change never hands out a fresh burst. The previous version's
        bucket is read through the limiter (this worker's whole view of it, peers'
        unmerged spending included; a chain of changes carries over step by step).
        Once the previous version was replaced longer ago than its buckets take to
        expire, there is nothing left to carry and no extra read is made.
        """
        raw = self.read_stored(key)
        if raw is not None:
            return raw
        found = self.rules.predecessor(key)
        if found is None:
            return None
        old_key, old_policy, policy, replaced = found
        now = self.clock()
        if now - replaced > self.expire_horizon(old_policy.rule):
            return None
        old = self.limiter.view(old_key)
        if old == BOTTOM:
            return None
        carried = crdt.carry_over(old, old_policy.rule, policy.rule, now)
        return None if carried == BOTTOM else crdt.encode(carried)

    def _carry_forward(self, key: bytes, now: float) -> None:
        """``key``'s view grew; if it is a bucket of a rule's previous version whose
        successor this worker has already read (and carried over, in ``_read``), join
        the carry-over of what it knows now into the successor: a worker that carried
        a bucket over before the old bucket's last spending reached it does not keep
        the fuller level. Sound because a carry-over is a W-only state: more
        spending known makes a larger W, and the join keeps the larger."""
        found = self.rules.successor(key)
        if found is None:
            return
        new_key, old_policy, policy = found
        if not self.limiter.is_cached(new_key):
            return  # read later through _read, which carries over then
        carried = crdt.carry_over(self.limiter.view(key), old_policy.rule, policy.rule, now)
        if carried != BOTTOM:
            self.limiter.on_peer_state(new_key, carried, now)

    # -- readiness ---------------------------------------------------------------------------
    def ready(self) -> bool:
        """True once this worker's replicas (active and standby) have been recovered
        and it has read the recent update topic (deltas the table may not have yet).

        Latched: a later rebalance does not take a worker out of service; its
        RocksDB replicas stay on disk and keep answering while partitions move.
        """
        if not self._ready and not self.stopping and self.peer_feed_ready and self.tables_recovered():
            self._ready = True
            _settle_heap(self.settings.gc_young_threshold)
            metrics.READY.set(1)
        return self._ready

    def mark_peer_feed_ready(self) -> None:
        """The update-topic reader has caught up with what was there when it started."""
        self.peer_feed_ready = True

    def mark_stopping(self) -> None:
        """The worker is stopping: from now on it admits nothing (503, like a worker that is
        not ready yet), so the last publish it is about to make holds every admission."""
        self.stopping = True
        self._ready = False
        metrics.READY.set(0)


def _settle_heap(young_threshold: int) -> None:
    """Take what is alive when the worker becomes ready out of the collector's full passes,
    and let its young passes come less often.

    Faust, aiokafka, aiohttp and their modules are some hundred thousand objects
    that live as long as the process; every full (generation 2) collection
    walked them all: 30-130 ms pauses every second or two under load, which
    were most of the replication delay's p99. Frozen, a full collection only
    walks what was allocated since.

    A new user leaves two or three container objects behind for as long as its
    allowance takes to refill (its own state and allowance entry, about a
    second or more), and with Python's threshold of 700 each young pass walked
    the last few hundred users' objects, each surviving one walked again by the
    next generation's passes: about 1 µs of a new user's request, and as much
    again in what the walks did to the CPU's caches (docs/performance-journal.md,
    "The collector's young passes and new users"). Requests that free what they
    allocate (one hot user) set off a few in ten seconds of full load either way. ``young_threshold``
    0 leaves Python's own.
    """
    gc.collect()
    gc.freeze()
    if young_threshold:
        gc.set_threshold(young_threshold, *gc.get_threshold()[1:])
    metrics.GC_YOUNG_THRESHOLD.set(gc.get_threshold()[0])
