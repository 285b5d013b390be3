"""This worker's side of the CRDT: the decision, its own unflushed states, the replica cache.

The hot path is :meth:`Limiter.decide`: one dict lookup for the replica (a
RocksDB read on a cache miss), one for this worker's own state, a join and a
``try_consume``. No I/O besides that read, no await, no Kafka.

Own states: after an admission the worker keeps the whole new state of the key
(``join(replica, own)`` plus its consumption) until the table replica shows it
(``own ≤ replica``). A timer flushes each touched key once per interval as a
whole lattice state, never as a bare counter; an admission far from the limit
may instead stay unpublished, within an allowance per key, or past it be
published late (``holds``, :mod:`bucketstream.hold`). What this worker knows of other
workers arrives two ways, both joined into the decoded cache:

* :meth:`Limiter.on_peer_state`: every worker reads the whole update topic
  (one Kafka hop from any other worker's flush);
* :meth:`Limiter.on_replica_changed`: the table's changelog (standby
  partitions) and the agent's own writes (active ones): the merged state,
  which is what a restarted worker recovers.

Both drop own states that Kafka now has (``own ≤ view``) and measure the
replication delay: first admission of a flushed batch → this worker's view
shows that batch, the same hop that brings it to every other worker.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from bucketstream.crdt import (
    BucketState, CodecError, Decision, Rule, debit, decode, encode, join, leq, tokens, try_consume,
)
from bucketstream.hold import Holds

log = logging.getLogger(__name__)

BOTTOM = BucketState()


class Flushed(NamedTuple):
    """A batch of admissions sent for one key: our counter after it, when the first happened,
    and when it was flushed."""

    counter: int
    first_admit: float
    flushed_at: float


def slot_count(state: BucketState, slot: int) -> int:
    return state.counters.get(slot, 0)


class Limiter:
    """Decides locally for any bucket key; knows nothing of Faust or Kafka."""

    def __init__(
        self,
        slot: int,
        read_table: Callable[[bytes], bytes | None],
        *,
        cache_size: int = 200_000,
        on_delay: Callable[[float], None] | None = None,
        resend_after: float = 30.0,
        max_unconfirmed: int = 50_000,
        on_learned: Callable[[bytes, float], None] | None = None,
        holds: Holds | None = None,
    ) -> None:
        self.slot = slot
        self._read_table = read_table
        self._cache_size = cache_size
        self._on_delay = on_delay or (lambda seconds: None)
        self._resend_after = resend_after
        self.max_unconfirmed = max_unconfirmed
        self._on_learned = on_learned  # called when a key's replica view grew (from Kafka)
        #: admissions kept unpublished (bucketstream.hold); None: every admission is published
        self.holds = holds if holds is not None and holds.rule.enabled else None
        # decoded cache, BOTTOM = known absent (cached only for a key with own state, see
        # ``replica``); least recently read evicted first.
        # An OrderedDict, not a dict: popitem(last=False) is O(1) however many keys
        # were evicted before, where a dict's next(iter(d)) walks past every slot
        # deleted at its front since its last resize (a worker slowed 5x within
        # minutes of new users). LRU, not FIFO: a key is evicted only once cache_size
        # other keys were read after it, long after the RocksDB replica it is re-read
        # from caught up with what the peer feed had joined in (docs/design.md).
        self._replica: OrderedDict[bytes, BucketState] = OrderedDict()
        self._own: dict[bytes, BucketState] = {}  # states the replica does not reflect yet
        self._dirty: dict[bytes, float] = {}  # key -> first admission since the last flush
        self._inflight: dict[bytes, deque[Flushed]] = {}  # flushed, not yet seen in the replica
        self._resent: dict[bytes, tuple[float, float]] = {}  # key -> (last resend, next wait)
        self.pending_sends = 0  # flushed states whose send Kafka has not answered yet
        self.delays: deque[float] = deque(maxlen=256)  # recent replication delays, seconds
        self._delay_samples = 0  # ever taken (the deque stops growing at 256)
        self.live_workers = 1  # workers in the consumer group, refreshed by a timer
        self._delay_estimate = 0.1
        self.update_lags: deque[float] = deque(maxlen=4096)  # update produced -> merged by the agent here
        self.peer_lags: deque[float] = deque(maxlen=4096)  # update produced -> read by the peer feed here
        self.return_lags: deque[float] = deque(maxlen=4096)  # our flush -> its state back in our view
        self.changelog_lags: deque[float] = deque(maxlen=4096)  # changelog produced -> applied to a standby here

    # -- the hot path --------------------------------------------------------
    def replica(self, key: bytes) -> BucketState:
        """This worker's replica of the table entry (a full bucket if there is none).

        A read that finds nothing is cached only for a key this worker holds own state
        of, that is from a user's second request on: most keys read for the first time
        are users seen once, and caching their absence cost an insert and an eviction
        each, pushed the keys of returning users out, and slowed every request beside
        them (docs/performance-journal.md, "Absent keys out of the decoded cache").
        Not caching it is always safe: the cache only saves re-reading the replica, and
        what the peer feed joins in is cached (``on_peer_state``).
        """
        cache = self._replica
        state = cache.get(key)
        if state is not None:
            cache.move_to_end(key)
            return state
        raw = self._read_table(key)
        if raw is None:
            if key not in self._own:
                return BOTTOM
            state = BOTTOM
        else:
            state = self._decode(key, raw)
        self._cache(key, state)
        return state

    def _cache(self, key: bytes, state: BucketState) -> None:
        """Cache ``state`` for ``key`` (a key not cached yet goes in last, the least
        recently read one out if the cache is full)."""
        cache = self._replica
        if key not in cache and len(cache) >= self._cache_size:
            cache.popitem(last=False)
        cache[key] = state

    def view(self, key: bytes) -> BucketState:
        """What this worker knows of the key: the replica joined with its own state."""
        own = self._own.get(key)
        replica = self.replica(key)
        return replica if own is None else join(replica, own)

    def accepts(self, key: bytes) -> bool:
        """Back-pressure: False for a key this worker holds no own state of while it holds
        ``max_unconfirmed`` states Kafka has not shown it yet (a publishing backlog).

        Keys it already holds state of keep being decided: their next flush is one
        message whatever they spend, so they add nothing to the backlog. Held-back and
        deferred states (``holds``) wait for no send and do not count: ``hold_keys`` bounds them.
        """
        return len(self._dirty) + len(self._inflight) < self.max_unconfirmed or key in self._own

    def decide(self, key: bytes, rule: Rule, now: float, cost: int = 1, capped: bool = False) -> Decision:
        own = self._own.get(key)
        replica = self.replica(key)
        if own is None:
            view = replica
        else:
            view = join(replica, own)
            if capped:
                # the burst cap: what this worker spent that Kafka has not shown it yet
                unseen = slot_count(own, self.slot) - slot_count(replica, self.slot)
                if unseen + cost > self.burst_cap(rule, self._unconfirmed_for(key, now)):
                    # answered like any refusal; the wait is about one replication delay
                    return Decision(False, tokens(view, rule, now), max(self.delay_estimate, 0.001))
        decision, new = try_consume(view, rule, self.slot, now, cost)
        if decision.allowed:
            self._own[key] = new
            if key not in self._dirty and not self._keeps(key, rule, now, cost, decision.remaining, capped):
                self._dirty[key] = now
        return decision

    def _keeps(self, key: bytes, rule: Rule, now: float, cost: int, remaining: float, capped: bool) -> bool:
        """Whether an admission on a key not already due for the next flush may stay off it:
        held back within the allowance, or else deferred (bucketstream.hold). Not deferred
        under the burst cap, which counts deferred tokens as unconfirmed."""
        holds = self.holds
        return holds is not None and (
            holds.try_hold(key, rule, now, cost, remaining, self.live_workers)
            or (not capped and holds.try_defer(key, rule, now, cost, remaining)))

    def decide_all(self, keys: Sequence[bytes], rules: Sequence[Rule], now: float, cost: int = 1,
                   capped: bool = False, shadow: Sequence[bool] = ()) -> tuple[int, list[Decision]]:
        """One request against several limits (one key and rule each), all or nothing.

        Every limit is decided on this worker's view; if none refuses, every one is
        charged, else none is. A limit marked ``shadow`` that refuses blocks nothing
        (and is not charged). Returns the index of the first limit that refused
        (-1: admitted) and each limit's decision: a refused one says how long until
        it would admit, an admitted one what it holds after the charge (or would,
        when another limit refused).
        """
        decisions: list[Decision] = []
        news: list[BucketState | None] = []
        refused = -1
        for i, key in enumerate(keys):
            rule = rules[i]
            own = self._own.get(key)
            replica = self.replica(key)
            view = replica if own is None else join(replica, own)
            if capped and own is not None:
                unseen = slot_count(own, self.slot) - slot_count(replica, self.slot)
                if unseen + cost > self.burst_cap(rule, self._unconfirmed_for(key, now)):
                    decision = Decision(False, tokens(view, rule, now), max(self.delay_estimate, 0.001))
                    new = None
                else:
                    decision, new = try_consume(view, rule, self.slot, now, cost)
            else:
                decision, new = try_consume(view, rule, self.slot, now, cost)
            decisions.append(decision)
            news.append(new if decision.allowed else None)
            if not decision.allowed and refused < 0 and not (shadow and shadow[i]):
                refused = i
        if refused < 0:
            for i, (key, new) in enumerate(zip(keys, news)):
                if new is not None:
                    self._own[key] = new
                    # each limit is its own bucket, with its own allowance (bucketstream.hold)
                    if key not in self._dirty and not self._keeps(key, rules[i], now, cost, decisions[i].remaining,
                                                                  capped):
                        self._dirty[key] = now
        return refused, decisions

    def report(self, key: bytes, rule: Rule, slot: int, now: float, cost: int) -> tuple[float, bool]:
        """Charge a report of ``cost`` tokens, unconditionally, in its own ``slot``
        (``crdt.report_slot`` of its id); returns (tokens left, whether it was a duplicate).

        Published like an admission (the key becomes dirty); a duplicate this worker
        already knows of changes nothing. ``crdt.ReportConflict`` if the slot holds
        another cost.
        """
        view = self.view(key)
        new = debit(view, rule, slot, now, cost)
        if new is view:
            return tokens(view, rule, now), True
        self._own[key] = new
        if key not in self._dirty:
            self._dirty[key] = now
        return tokens(new, rule, now), False

    def burst_cap(self, rule: Rule, unconfirmed_for: float = 0.0) -> float:
        """How much this worker may spend on one key before Kafka shows it that spending.

        A burst that hits N workers at once admits at most ``C + (N-1)·b``, so
        ``b = C / (2·(N-1))`` keeps it under ``1.5·C`` (instead of ``N·C``);
        one worker alone has no cap. Plus this worker's share of the refill,
        ``rate / N`` per second, for as long as its oldest admission is
        unconfirmed: while Kafka is away, isolated workers together stay near
        the rule's rate. Never below ``2·rate·d``, so one client's steady rate
        through one worker is not throttled by the round trip itself.
        """
        n = self.live_workers
        if n <= 1:
            return math.inf
        share = max(1, math.floor(rule.capacity / (2 * (n - 1)))) + rule.rate * unconfirmed_for / n
        return max(share, math.ceil(2 * rule.rate * self._delay_estimate))

    def _unconfirmed_for(self, key: bytes, now: float) -> float:
        batches = self._inflight.get(key)
        oldest = batches[0].first_admit if batches else self._dirty.get(key, now)
        return max(0.0, now - oldest)

    @property
    def delay_estimate(self) -> float:
        """Recent replication delay: p90 of the last samples (0.1 s before there are any)."""
        return self._delay_estimate

    # -- flushing --------------------------------------------------------------
    def take_dirty(self, now: float = 0.0) -> list[tuple[bytes, bytes]]:
        """The (key, encoded whole state) pairs to publish now: one per touched key."""
        out = []
        holds = self.holds
        for key, first in self._dirty.items():
            own = self._own.get(key)
            if own is None:
                continue
            if holds is not None:
                holds.published(key)
            out.append((key, encode(own)))
            self._inflight.setdefault(key, deque()).append(Flushed(slot_count(own, self.slot), first, now or first))
        self._dirty.clear()
        self.pending_sends += len(out)
        return out

    def drop_refilled(self, now: float, limit: int | None = None) -> int:
        """Forget the held-back states whose allowance has refilled (``Holds.refilled``), at
        most ``limit`` keys' worth (``Holds.any_refilled`` says whether some are left).

        A key that also waits for Kafka keeps its state: if a flush is in flight, the
        held-back part after it is published (else the state would outlive its entry,
        since the replica would never cover it); returns how many states were dropped.
        """
        if self.holds is None:
            return 0
        dropped = 0
        deferred = self.holds.is_deferred
        for key in self.holds.refilled(now, limit):
            if key in self._dirty or deferred(key):  # a deferred state is published, never dropped
                continue
            if key in self._inflight:
                self._dirty[key] = now
            elif self._own.pop(key, None) is not None:
                dropped += 1
        return dropped

    def publish_due(self, now: float, limit: int | None = None) -> int:
        """Mark for the next flush the deferred keys whose wait is over (``Holds.due``), at
        most ``limit`` of them (``Holds.any_due`` says whether some are left); returns how
        many were marked."""
        if self.holds is None:
            return 0
        n = 0
        for key in self.holds.due(now, limit):
            if key in self._own and key not in self._dirty:
                self._dirty[key] = now
                n += 1
        return n

    def release_held(self, now: float) -> int:
        """Publish every held-back state with the next flush (a worker stopping cleanly keeps
        nothing to itself); returns how many keys that adds."""
        if self.holds is None:
            return 0
        n = 0
        for key in self.holds.keys():
            if key in self._own and key not in self._dirty:
                self._dirty[key] = now
                n += 1
        self.holds.clear()
        return n

    def on_sent(self, keys: list[bytes], failed: bool, now: float) -> None:
        """Kafka answered the send of these keys' states (``take_dirty``): acknowledged, or
        failed for good (the producer gave up: broker away past its timeout).

        A failed key is sent again with the next flush, as its then-current whole
        state (the join is idempotent, so a duplicate is harmless).
        """
        self.pending_sends -= len(keys)
        if failed:
            for key in keys:
                batches = self._inflight.get(key)
                if key in self._own and key not in self._dirty:
                    self._dirty[key] = batches[0].first_admit if batches else now

    def resend_stale(self, now: float) -> int:
        """Mark keys dirty again whose flushed state has not shown up in the replica in time.

        The safety net only: a send that fails is resent at once (``on_sent``);
        this covers a state Kafka acknowledged that still never came back, after
        ``resend_after`` (30 s by default), doubling up to 10 minutes.
        """
        # Measured from the last resend, with the wait doubling each time: a
        # backlog in Kafka (not a lost send) must not be multiplied by resends.
        n = 0
        for key, batches in self._inflight.items():
            if not batches or key not in self._own or key in self._dirty:
                continue
            last, wait = self._resent.get(key, (batches[-1].first_admit, self._resend_after))
            if now - last > wait:
                self._dirty[key] = batches[-1].first_admit
                self._resent[key] = (now, min(2 * wait, 600.0))
                n += 1
        for key in [k for k in self._resent if k not in self._inflight]:
            del self._resent[key]
        return n

    # -- replica changes -------------------------------------------------------
    def on_replica_changed(self, key: bytes, raw: bytes | None, now: float) -> None:
        """A changelog event (or the agent's own write) changed the table entry of ``key``.

        The cached view keeps what peers' deltas taught it too (everything is a
        lattice state, so the join of both is always valid); a tombstone resets it.
        """
        if raw is None:
            state = BOTTOM
            if key in self._replica:
                self._replica[key] = BOTTOM
        else:
            state = self._decode(key, raw)
            cached = self._replica.get(key)
            if cached is not None:
                state = self._replica[key] = join(cached, state)
        self._observe(key, state, now, deleted=raw is None)
        if raw is not None and self._on_learned is not None:
            self._on_learned(key, now)

    def on_peer_state(self, key: bytes, delta: BucketState, now: float) -> None:
        """A whole state some worker (this one included) published to the update topic.

        Joined into the view at once: one Kafka hop, not two, and it does not
        wait for the partition's owner (which may be dead or rebalancing).
        """
        state = join(self.replica(key), delta)
        self._cache(key, state)
        self._observe(key, state, now, deleted=False)
        if self._on_learned is not None:
            self._on_learned(key, now)

    def is_cached(self, key: bytes) -> bool:
        return key in self._replica

    def _observe(self, key: bytes, state: BucketState, now: float, deleted: bool) -> None:
        """Settle what ``state`` (the current replica view) shows of our own admissions."""
        batches = self._inflight.get(key)
        if batches:
            seen = slot_count(state, self.slot)
            while batches and batches[0].counter <= seen:
                batch = batches.popleft()
                self.return_lags.append(now - batch.flushed_at)
                self._on_delay_sample(now - batch.first_admit)
            if not batches:
                del self._inflight[key]
        own = self._own.get(key)
        if own is not None and key not in self._dirty and key not in self._inflight:
            if deleted and self.holds is not None and self.holds.is_deferred(key):
                # the table forgot a bucket idle there, but this worker admitted on it since
                # and owes those tokens to the others: published when due, not forgotten
                return
            if deleted or leq(own, state):
                # Kafka has everything we admitted (our own delta came back on
                # the update topic, or the table shows it), or the owner deleted
                # a bucket that was full and idle far longer than any flush
                del self._own[key]

    def _on_delay_sample(self, seconds: float) -> None:
        self.delays.append(seconds)
        self._delay_samples += 1
        self._on_delay(seconds)
        # re-estimated every 16th sample (a full deque made this every sample: 6 % of a
        # worker's CPU at unique-user load)
        if self._delay_samples % 16 == 0 or self._delay_samples < 16:
            recent = sorted(self.delays)
            self._delay_estimate = recent[int(0.9 * (len(recent) - 1))]

    def forget_cache(self) -> None:
        """Drop the decoded cache (after a rebalance the store may hold other partitions)."""
        self._replica.clear()

    # -- introspection -----------------------------------------------------------
    def own_state(self, key: bytes) -> BucketState | None:
        return self._own.get(key)

    @property
    def own_keys(self) -> int:
        """Own states kept: waiting for Kafka, or held back (``holds``)."""
        return len(self._own)

    @property
    def waiting_keys(self) -> int:
        """Keys whose admissions are to be published or published and not shown back yet
        (held-back ones wait for nothing)."""
        return len(self._dirty.keys() | self._inflight.keys())

    @property
    def held_keys(self) -> int:
        return len(self.holds) if self.holds is not None else 0

    @property
    def deferred_keys(self) -> int:
        return self.holds.deferred_keys() if self.holds is not None else 0

    @property
    def unsettled(self) -> bool:
        """Whether some admission may not be in Kafka yet: a key waiting for a flush,
        or a flushed state Kafka has not acknowledged."""
        return bool(self._dirty) or self.pending_sends > 0

    def own_encoded(self) -> dict[bytes, bytes]:
        """Every own state the replica does not show yet, encoded (what a stopping
        worker keeps on disk when Kafka is away)."""
        return {key: encode(state) for key, state in self._own.items()}

    @property
    def cached_keys(self) -> int:
        return len(self._replica)

    def _decode(self, key: bytes, raw: bytes) -> BucketState:
        try:
            return decode(raw)
        except CodecError as exc:
            log.error("table value for key %r is not a bucket state (%s); treating it as absent", key, exc)
            return BOTTOM
