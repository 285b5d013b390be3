"""The publishing rule: which admissions a worker may keep to itself instead of publishing them.

The model
---------
Publishing every admission costs a record on the update topic, a changelog
record and work on every other worker, for every request, although only keys
near their limit need the other workers to know. So a worker may *hold back*
an admission (not publish it) when both hold:

* **far from the limit**: its own view of the bucket still has at least
  ``floor · C`` tokens after the admission;
* **within its allowance**: each (key, worker) has an allowance of held-back
  tokens, at most ``A = max(1, burst · C)``, that refills at
  ``ρ = share · R / N`` tokens per second (``N``: workers in the group). A
  held admission spends ``cost`` of it.

Otherwise the key is published as before, as a whole state: that one record
carries everything held back on it so far. A key already waiting for the next
flush is not charged (its consumption goes out anyway).

Why an allowance that refills with time, not "hold while my view is full":
held-back consumption is invisible to the other workers, and if the worker
drops it (below) invisible to itself too, so the worst case counts every
held-back token as forgotten. A rule that forgets whenever a worker's own view
looks full forgets again and again for a user spread thinly over the workers
(each sees the bucket refilling) and admits up to ``N`` times the rate. An
allowance forgets at most ``A + ρ·T`` per key and worker in any time ``T``:
``N·A + share·R·T`` per key for the cluster, a constant factor ``1 + share``
of the rate however long the traffic lasts and however many workers there
are (docs/design.md, "Holding back").

Entries live until their allowance has refilled to ``A``; then the key's own
state is dropped unless something of it is still to be published (the worker
forgets what it held back: covered by the bound). Memory is at most
``max_keys`` entries: a new key beyond that is published, never held.

**Deferring.** Once the allowance is spent, an admission that is still far from
the limit need not go out at the next flush either: the worker may *defer* the
key, publishing it later, when its deferred admissions would pass
``L = defer · C`` tokens or after ``defer_for`` seconds, whichever comes first
(or at once when the view falls below the floor). Deferred tokens are late, not
forgotten, so they cost the bound a constant, ``(N − 1)·L``, and no rate. A user
well below its limit but above the allowance's refill (the common case of real,
skewed traffic: a user at a fifth of its rate) then costs one record per ``L``
tokens or per ``defer_for`` seconds instead of one per admission. A ``kill -9``
loses them: at most ``L`` per key besides what was held back.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from bucketstream.crdt import Rule

__all__ = ["HoldRule", "Holds"]


@dataclass(frozen=True, slots=True)
class HoldRule:
    """The thresholds, from settings; ``share = 0`` holds nothing (every admission is published)."""

    share: float = 0.05  # of each rule's rate the cluster may lose to held-back tokens
    burst: float = 0.05  # of each rule's capacity one worker may hold back at once (at least one token)
    floor: float = 0.5  # hold only while the worker's view keeps this share of the capacity
    max_keys: int = 100_000  # allowance entries kept at most, and as many deferred keys
    defer: float = 0.1  # of each rule's capacity one worker may publish late on one key (0: never defer)
    defer_for: float = 10.0  # seconds a deferred admission waits at most

    def __post_init__(self) -> None:
        for name in ("share", "burst", "floor", "defer"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"hold {name} must be between 0 and 1, got {value!r}")
        if self.max_keys < 0:
            raise ValueError(f"hold max_keys must be >= 0, got {self.max_keys!r}")
        if not (math.isfinite(self.defer_for) and self.defer_for >= 0):
            raise ValueError(f"hold defer_for must be a number of seconds >= 0, got {self.defer_for!r}")

    def allowance(self, rule: Rule, workers: int) -> tuple[float, float]:
        """``(A, ρ)`` for ``rule`` among ``workers`` workers: the most one worker holds back at
        once, in tokens, and how fast that allowance refills, in tokens per second."""
        return max(1.0, self.burst * rule.capacity), self.share * rule.rate / max(1, workers)

    def deferrable(self, rule: Rule) -> float:
        """``L``: the most one worker leaves unpublished on a key once its allowance is spent."""
        return self.defer * rule.capacity if self.defer_for > 0 else 0.0

    @property
    def enabled(self) -> bool:
        return self.share > 0 and self.max_keys > 0


class Holds:
    """One worker's allowances, per key. Pure: the caller passes the time and the worker count."""

    def __init__(self, rule: HoldRule) -> None:
        self.rule = rule
        # key -> (allowance left at `at`, `at`, when it will have refilled to A). Oldest
        # first: an entry moves to the end when it is spent from again, so the sweep
        # (``refilled``) stops at the first entry still refilling: O(what it removes).
        # An OrderedDict, not a dict: the sweep removes from the front, and a dict's walk
        # to its first entry passes every slot removed there since it last resized, so
        # each slice of the sweep cost more the longer the worker ran (docs/performance-journal.md).
        # Plain tuples of floats, which the garbage collector stops tracking: a worker
        # holds one per user seen lately, and objects it tracks would make every full
        # pass (a stall of the whole loop) walk them all.
        self._entries: OrderedDict[bytes, tuple[float, float, float]] = OrderedDict()
        self.held = 0  # admissions held back, ever (a counter for metrics)
        # key -> (when it must be published at the latest, tokens deferred). Oldest first:
        # every entry waits the same ``defer_for``, so the sweep (``due``) stops at the first
        # entry not yet due. An OrderedDict of plain tuples of floats, as above.
        self._deferred: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self.deferred = 0  # admissions deferred, ever (a counter for metrics)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def try_hold(self, key: bytes, rule: Rule, now: float, cost: int, remaining: float, workers: int) -> bool:
        """Whether an admission of ``cost`` on ``key``, leaving ``remaining`` tokens in this
        worker's view, may stay unpublished; if so, its allowance is spent."""
        if remaining < self.rule.floor * rule.capacity:
            return False
        cap, refill = self.rule.allowance(rule, workers)
        entries = self._entries
        entry = entries.pop(key, None)
        if entry is None:
            if len(entries) >= self.rule.max_keys or refill <= 0:
                return False
            left = cap
        else:
            left, at, _ = entry
            left = min(cap, left + (now - at) * refill) if refill > 0 else left
        if left < cost:
            if entry is not None:
                entries[key] = entry  # unchanged; at the end: it was just used
            return False
        left -= cost
        entries[key] = (left, now, now + (cap - left) / refill)
        self.held += 1
        return True

    def try_defer(self, key: bytes, rule: Rule, now: float, cost: int, remaining: float) -> bool:
        """Whether an admission of ``cost`` on ``key`` (which the allowance could not hold),
        leaving ``remaining`` tokens in this worker's view, may wait to be published; if not,
        the key is published now with everything deferred on it so far (``published``)."""
        if remaining < self.rule.floor * rule.capacity:
            self._deferred.pop(key, None)
            return False
        deferred = self._deferred
        entry = deferred.get(key)
        if entry is None:
            if len(deferred) >= self.rule.max_keys or cost > self.rule.deferrable(rule):
                return False
            deferred[key] = (now + self.rule.defer_for, float(cost))
        else:
            due, tokens = entry
            if tokens + cost > self.rule.deferrable(rule):
                del deferred[key]
                return False
            deferred[key] = (due, tokens + cost)
        self.deferred += 1
        return True

    def published(self, key: bytes) -> None:
        """``key``'s whole state is going out: what was deferred on it goes with it."""
        self._deferred.pop(key, None)

    def is_deferred(self, key: bytes) -> bool:
        return key in self._deferred

    def deferred_keys(self) -> int:
        return len(self._deferred)

    def due(self, now: float, limit: int | None = None) -> list[bytes]:
        """Remove and return the deferred keys whose wait is over, oldest first, at most
        ``limit`` of them."""
        return _take_due(self._deferred, 0, now, limit)

    def any_due(self, now: float) -> bool:
        """Whether ``due(now)`` would return a key."""
        return _first_due(self._deferred, 0, now)

    def refilled(self, now: float, limit: int | None = None) -> list[bytes]:
        """Remove and return the keys whose allowance is full again, oldest first, at most
        ``limit`` of them (the sweep stops at the first entry still refilling, which a
        later sweep finds)."""
        return _take_due(self._entries, 2, now, limit)

    def any_refilled(self, now: float) -> bool:
        """Whether ``refilled(now)`` would return a key."""
        return self.next_refill() <= now

    def next_refill(self) -> float:
        """The earliest time at which ``refilled`` may remove a key (the first entry's, as it
        stops there); infinity if there is none."""
        entry = next(iter(self._entries.values()), None)
        return math.inf if entry is None else entry[2]

    def keys(self) -> list[bytes]:
        """The keys held back or deferred on (a stopping worker publishes them all)."""
        entries = self._entries
        return list(entries) + [key for key in self._deferred if key not in entries]

    def clear(self) -> None:
        self._entries.clear()
        self._deferred.clear()


def _take_due(entries: OrderedDict[bytes, tuple], at: int, now: float, limit: int | None) -> list[bytes]:
    """Remove and return the keys whose ``entry[at]`` is not after ``now``, at most ``limit``.
    The entries are in the order of that time, so the walk stops at the first one not due:
    O(what it removes), an OrderedDict's front being one step away however much was
    removed from it before."""
    out = []
    for key, entry in entries.items():
        if entry[at] > now or len(out) == limit:
            break
        out.append(key)
    for key in out:
        del entries[key]
    return out


def _first_due(entries: OrderedDict[bytes, tuple], at: int, now: float) -> bool:
    """Whether ``_take_due`` would remove a key: O(1)."""
    first = next(iter(entries.values()), None)
    return first is not None and first[at] <= now
