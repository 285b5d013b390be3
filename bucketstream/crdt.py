"""A token bucket as a state-based CRDT: per-node consumption counters and a wasted-refill register.

The model, in plain words
-------------------------
A rule gives a bucket a capacity ``C`` (tokens) and a refill rate ``r``
(tokens per second); time ``t`` is counted from the rule's ``epoch``. Every
node (a worker process: a fresh random slot id at every process start) keeps,
per bucket, a whole lattice state:

* ``S[n]``: tokens consumed so far at node ``n``: a grow-only counter per
  node (a G-Counter, as in riak_dt_gcounter: node -> count, only increments,
  merged by per-node max);
* ``W``: refill that was wasted because the bucket was full, a max-register.

The bucket then holds::

    U(t)      = C + r·t - ΣS - W        uncapped level (negative = a debt)
    tokens(t) = min(C, U(t))

A request of ``cost`` tokens at node ``n``:

* fewer than ``cost`` tokens: refused, the state is left alone (the caller
  learns how long until ``cost`` tokens exist, measured on ``U``, so a debt
  makes the wait longer);
* otherwise admitted: ``W = max(W, r·t - ΣS)`` (a no-op unless the bucket
  was full, ``U > C``: then it caps the refill at ``C``), and
  ``S[n] += cost``.

A report (a cost charged after the response, :func:`debit`) is admitted
unconditionally, so it may leave a debt: ``W`` is raised the same way, and
the counter of the report's own slot ``h(id)`` (a keyed 63-bit hash of the
report's id, :func:`report_slot`) is *set* to ``cost``. Every worker that
applies the report writes the same counter, so the join charges it once,
with no deduplication store; different ids are different slots.

``join`` is the least upper bound of the product lattice (counters: per-node
max; ``W``: max) and the empty state :class:`BucketState()` (no counters,
``W = 0``) is its bottom: a full bucket. A node may evaluate
``join(everything it has heard, its own state)`` at any time; whole states
are idempotent, commutative and associative to join, so Kafka's at-least-once
delivery, replays and reordering change nothing. Knowing more never gives
more tokens (``U`` falls as counters and ``W`` rise). On one node this is
exactly the classic token bucket ``level = min(C, level + r·Δt)``: capping
``W`` at each admission is the same as capping the level continuously, since
between admissions the level only rises. Across nodes, spending that a node
has not heard of yet becomes a debt once it hears of it; the long-run rate is
exact, and short bursts stay within ``C + r·t + (N-1)·(C + r·d)`` for ``N``
nodes and replication delay ``d`` (see ``bucketstream.simulation``).

Exact arithmetic
----------------
Everything inside is an integer, so ``join`` is exact and deterministic and
states round-trip through :func:`encode` exactly:

* time is counted in whole microseconds since the rule's epoch
  (``T = round((now - epoch) * 1e6)``; a unix timestamp as a float resolves
  about 0.24 µs today). Times before the epoch count as the epoch.
* a token is ``rule.scale`` fixed-point units, chosen per rule so that both
  ``C`` and one microsecond of refill are whole units:
  ``scale = 10**6 · D`` with ``D`` the least common denominator of
  ``capacity`` and ``rate`` (``D = 1`` for whole numbers; a float counts as
  the shortest decimal that prints it, so ``rate=0.1`` is 1/10 and
  ``D = 10``; see :func:`exact`). Refill over ``T`` µs is then ``rate·D·T``
  units: exact, with no rounding at all.
* counters are whole tokens (``cost`` is an int ≥ 1); ``W`` is an int in the
  rule's units.

So a state means nothing without its rule (as with any epoch). A rule change
(new capacity, rate or epoch) is a new rule version: callers keep states per
rule version and never read a state against other parameters.

Deleting a bucket, and the one caveat
-------------------------------------
A state that is full at time ``t_d`` stays full at every later time (``U``
only grows with time), and every future answer it gives is the same as the
bottom's. So a bucket that has been full for a while may be deleted: a stale
copy of it, joined later with nothing else, neither locks the user out nor
hands out tokens.

The caveat (pinned by ``tests/test_crdt.py``): after a deletion, a *new*
state ``Y`` grows from bottom; its first admission sets ``W_Y = r·t1``, which
is measured against the counters ``Y`` knows, and ``Y`` does not know the
deleted counters ``S_X``. A stale ``X`` that arrives after ``Y`` exists adds
its counters to the sum while ``W`` stays ``W_Y``, so ``join(X, Y)`` has up
to ``ΣS_X`` fewer tokens than ``Y``: a lock-out. It is bounded, never extra:

* ``tokens(Y) - ΣS_X ≤ tokens(join(X, Y)) ≤ tokens(Y)`` at every time, and
* the join is full again ``ΣS_X / r`` seconds after ``Y`` alone would be.

The bound is large in practice: counters run since the rule's epoch, so
``ΣS_X`` is the bucket's lifetime consumption, and *any* state that carries
the old history is such an ``X``: a replayed or late update, a lagging
replica, or a worker's own unflushed state that crosses the deletion (its
flush lands after another worker has started ``Y``). Counters carry no time,
so the join cannot see that ``X``'s spending predates ``Y``'s cap; telling
"old and refilled" from "concurrent and unpaid" would need per-counter
history and the rule inside the join. The core keeps "nothing admitted is
ever lost" and leaves the mitigation to the system layer, e.g.: do not join
an incoming state that was already full ``grace`` seconds ago
(``is_full(x, rule, now - grace)``, ``grace`` well beyond the largest
replication delay: all its spending is older than that, so the table either
has it or it predates a deletion), and never send a state that predates a
deletion after it.

Wire format (version 1)
-----------------------
``0xB1`` (type 0xB = bucket state, version 1), then unsigned LEB128 varints:
``W``, the number of counters, and per counter in increasing node order the
node id (the first absolute, each next one as the gap minus one) and the
count minus one. Every state has exactly one encoding; a bucket touched by
three nodes with 63-bit slot ids takes about 40-50 bytes.

Errors: ``ValueError`` for bad arguments (a rule, a cost, a node id, a time);
:class:`CodecError` (a ``ValueError``) for bytes that are not a state.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "DEFAULT_EPOCH",
    "TICKS_PER_SECOND",
    "MAX_NODE",
    "Rule",
    "BucketState",
    "Decision",
    "CodecError",
    "BOTTOM",
    "exact",
    "join",
    "leq",
    "tokens",
    "try_consume",
    "debit",
    "report_slot",
    "ReportConflict",
    "retry_after",
    "is_full",
    "carry_over",
    "encode",
    "decode",
]

#: Default time origin of a rule: 2025-01-01T00:00:00Z, in unix seconds.
DEFAULT_EPOCH = 1_735_689_600.0
#: The core's clock resolution: time is counted in whole microseconds.
TICKS_PER_SECOND = 1_000_000
#: Node (slot) ids are ints in ``[0, MAX_NODE)``.
MAX_NODE = 2**63

_TAG = 0xB1  # type 0xB (bucket state), version 1
_MAX_VARINT_BYTES = 512  # ~3584 bits: far beyond any real W or counter


def _check_positive(name: str, value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Rule.{name} must be a positive finite number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or not value > 0:
        raise ValueError(f"Rule.{name} must be a positive finite number, got {value!r}")
    return exact(value)


def exact(value: float) -> Fraction:
    """The exact value the core uses for a rule parameter.

    A float is read as the shortest decimal that prints it (``0.1`` is
    ``1/10``, not the binary float nearest to it): that is what a
    configuration file meant, and it keeps the rule's units small. Ints and
    ``Fraction`` are taken as they are.
    """
    if isinstance(value, float):
        return Fraction(repr(value))
    return Fraction(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """Capacity ``capacity`` tokens, refill ``rate`` tokens/s, time origin ``epoch`` (unix seconds).

    ``capacity`` and ``rate``: int, float or ``Fraction``, positive and
    finite (else ``ValueError`` naming the field and the value); the core
    computes with :func:`exact` of them. ``scale`` (derived) is the number of
    fixed-point units per token that this rule's states use for ``W``; see
    the module docstring.
    """

    capacity: float
    rate: float
    epoch: float = DEFAULT_EPOCH
    scale: int = field(init=False, repr=False, compare=False)
    _cap_units: int = field(init=False, repr=False, compare=False)  # C in units
    _rate_units: int = field(init=False, repr=False, compare=False)  # refill per µs, in units
    _epoch: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cap = _check_positive("capacity", self.capacity)
        rate = _check_positive("rate", self.rate)
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, numbers.Real) or not math.isfinite(self.epoch):
            raise ValueError(f"Rule.epoch must be finite unix seconds, got {self.epoch!r}")
        d = math.lcm(cap.denominator, rate.denominator)
        scale = TICKS_PER_SECOND * d
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "_cap_units", cap.numerator * (scale // cap.denominator))
        object.__setattr__(self, "_rate_units", rate.numerator * (d // rate.denominator))
        object.__setattr__(self, "_epoch", float(self.epoch))


def _ticks(rule: Rule, now: float) -> int:
    """Whole microseconds since the rule's epoch (0 before it)."""
    try:
        t = round((now - rule._epoch) * 1e6)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"now must be finite unix seconds, got {now!r}") from None
    return t if t > 0 else 0


class Decision(NamedTuple):
    """What one request got.

    ``remaining``: tokens left after this decision (negative while the bucket
    is in debt: others spent what this node had not heard of yet).
    ``retry_after``: 0.0 when allowed, else seconds until ``cost`` tokens
    exist (``inf`` when ``cost`` exceeds the capacity).
    """

    allowed: bool
    remaining: float
    retry_after: float


class CodecError(ValueError):
    """Bytes that are not an encoded :class:`BucketState` (truncated, garbage, other version)."""


class BucketState:
    """One bucket's lattice state: immutable, hashable, compared by value.

    ``BucketState()`` is bottom, the full bucket. ``BucketState(counters,
    wasted)`` builds any lattice element (tests, decoding); ``counters`` is a
    mapping (or iterable of pairs) node -> tokens consumed, zero counts are
    the same as absent and are dropped.

    Read-only views: ``counters`` (a read-only ``Mapping[int, int]``),
    ``wasted`` (``W``, an int in the rule's fixed-point units) and
    ``consumed`` (``ΣS``, an int). Immutable the way ``fractions.Fraction``
    is: public attributes are read-only properties, and the private slots are
    never written after construction (no ``__setattr__`` guard, which would
    cost the hot path a few hundred nanoseconds per new state).
    """

    __slots__ = ("_c", "_w", "_sum")
    _c: dict[int, int]
    _w: int
    _sum: int

    def __new__(cls, counters: Mapping[int, int] | Iterable[tuple[int, int]] = (), wasted: int = 0) -> BucketState:
        items = counters.items() if isinstance(counters, Mapping) else counters
        c: dict[int, int] = {}
        for pair in items:
            node, count = pair
            if type(node) is not int or not 0 <= node < MAX_NODE:
                raise ValueError(f"node ids are ints in [0, 2**63), got {node!r}")
            if type(count) is not int or count < 0:
                raise ValueError(f"counts are ints >= 0, got {count!r} for node {node}")
            if node in c:
                raise ValueError(f"node {node} appears twice")
            if count:
                c[node] = count
        if type(wasted) is not int or wasted < 0:
            raise ValueError(f"wasted is an int >= 0, got {wasted!r}")
        return _make(c, wasted, sum(c.values()))

    @property
    def counters(self) -> Mapping[int, int]:
        return MappingProxyType(self._c)

    @property
    def wasted(self) -> int:
        return self._w

    @property
    def consumed(self) -> int:
        return self._sum

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not BucketState:
            return NotImplemented
        return self._w == other._w and self._sum == other._sum and self._c == other._c

    def __hash__(self) -> int:
        return hash((frozenset(self._c.items()), self._w))

    def __repr__(self) -> str:
        return f"BucketState(counters={dict(sorted(self._c.items()))!r}, wasted={self._w!r})"

    def __reduce__(self):
        return (BucketState, (dict(self._c), self._w))


_new_object = object.__new__


def _make(c: dict[int, int], w: int, total: int) -> BucketState:
    """Internal constructor: no checks; ``c`` must never be mutated afterwards."""
    s = _new_object(BucketState)
    s._c = c
    s._w = w
    s._sum = total
    return s


#: The empty state: a full bucket.
BOTTOM = BucketState()


def join(a: BucketState, b: BucketState) -> BucketState:
    """The least upper bound: per-node max of the counters, max of ``W``.

    Returns one of its arguments whenever that argument already is the
    result (no allocation when ``a is b``, either is bottom, or one knows
    everything the other does: the usual case on the hot path).
    """
    if a is b:
        return a
    small, big = (b, a) if len(a._c) > len(b._c) else (a, b)
    sc = small._c
    bc = big._c
    big_ge = True  # big's counters >= small's, node by node
    small_ge = len(sc) == len(bc)  # and the other way round (needs the same nodes)
    for n, v in sc.items():
        have = bc.get(n)
        if have is None:
            big_ge = small_ge = False
            break
        if have < v:
            big_ge = False
            if not small_ge:
                break
        elif have > v:
            small_ge = False
            if not big_ge:
                break
    w = a._w if a._w > b._w else b._w
    if big_ge and small_ge:  # the same counters: whichever has the larger W (a on a tie)
        return a if a._w == w else b
    if big_ge:
        return big if w == big._w else _make(bc, w, big._sum)
    if small_ge:
        return small if w == small._w else _make(sc, w, small._sum)
    c = bc.copy()
    total = big._sum
    for n, v in sc.items():
        have = c.get(n, 0)
        if have < v:
            c[n] = v
            total += v - have
    return _make(c, w, total)


def leq(a: BucketState, b: BucketState) -> bool:
    """The lattice order: ``a ≤ b`` iff ``b`` knows everything ``a`` does (``join(a, b) == b``)."""
    if a is b:
        return True
    if a._w > b._w or a._sum > b._sum:
        return False
    bc = b._c
    for n, v in a._c.items():
        if bc.get(n, 0) < v:
            return False
    return True


def _uncapped(state: BucketState, rule: Rule, ticks: int) -> int:
    return rule._cap_units + rule._rate_units * ticks - rule.scale * state._sum - state._w


def tokens(state: BucketState, rule: Rule, now: float) -> float:
    """Tokens in the bucket at ``now`` (unix seconds): ``min(C, U)``; negative while in debt."""
    u = _uncapped(state, rule, _ticks(rule, now))
    cap = rule._cap_units
    return (u if u < cap else cap) / rule.scale


def is_full(state: BucketState, rule: Rule, now: float) -> bool:
    """True iff the bucket holds ``capacity`` tokens at ``now``; once full, full at every later time."""
    return _uncapped(state, rule, _ticks(rule, now)) >= rule._cap_units


def carry_over(old: BucketState, old_rule: Rule, new_rule: Rule, now: float) -> BucketState:
    """A state of ``new_rule`` that holds at ``now`` what ``old`` holds under ``old_rule``.

    For a rule change: the bucket keeps its level (capped at the new
    capacity, a debt stays a debt) and refills at the new rate from ``now``
    on, instead of starting full. The result has no counters, only ``W``:
    ``W = C' + r'·T' - L'``, so ``U'(now) = L'`` with ``L'`` the old level in
    the new rule's units, rounded down (never a fraction of a unit more than
    the old bucket held). A full old bucket carries over as the bottom (a
    full new bucket).

    Conservative under joins: ``W`` is a max-register, so two workers that
    carry the same bucket over at different times keep the lower level (a
    later carry-over of a bucket that was refilling gives the same ``W`` when
    the rates are equal, and a larger one if the old bucket filled up in
    between or the new rate is faster).
    """
    u_old = _uncapped(old, old_rule, _ticks(old_rule, now))
    level = min(u_old, old_rule._cap_units)
    target = math.floor(Fraction(level * new_rule.scale, old_rule.scale))
    cap = new_rule._cap_units
    if target >= cap:
        return BOTTOM
    return _make({}, cap + new_rule._rate_units * _ticks(new_rule, now) - target, 0)


def _check_cost(cost: object) -> int:
    if isinstance(cost, bool) or not isinstance(cost, numbers.Integral) or cost < 1:
        raise ValueError(f"cost must be an int >= 1, got {cost!r}")
    return int(cost)


def _wait(rule: Rule, now: float, ticks: int, u: int, need: int) -> float:
    """Seconds from ``now`` until the uncapped level ``u`` (at ``ticks``) reaches ``need`` units."""
    if need > rule._cap_units:
        return math.inf  # more than the bucket can ever hold
    target = ticks - ((u - need) // rule._rate_units)  # the first whole µs with U >= need
    # measured from the unrounded ``now``, so that ``now + wait`` lands on ``target``
    wait = (target - (now - rule._epoch) * 1e6) / 1e6
    return wait if wait > 0.0 else 0.0


def retry_after(state: BucketState, rule: Rule, now: float, cost: int = 1) -> float:
    """Seconds until ``cost`` tokens exist (0.0 if they do now; ``inf`` if ``cost > capacity``).

    Measured on the uncapped level, so a debt makes the wait longer.
    """
    if type(cost) is not int or cost < 1:
        cost = _check_cost(cost)
    need = cost * rule.scale
    ticks = _ticks(rule, now)
    u = _uncapped(state, rule, ticks)
    if u >= need and need <= rule._cap_units:
        return 0.0
    return _wait(rule, now, ticks, u, need)


_tuple_new = tuple.__new__


def try_consume(
    state: BucketState, rule: Rule, node: int, now: float, cost: int = 1
) -> tuple[Decision, BucketState]:
    """Decide one request of ``cost`` tokens at ``node`` and ``now``; returns the decision and the new state.

    The new state is ``state`` itself when refused, and always ``≥ state``.
    Callers keep the returned state as their own (never a bare counter).
    """
    if type(cost) is not int or cost < 1:
        cost = _check_cost(cost)
    if type(node) is not int or not 0 <= node < MAX_NODE:
        raise ValueError(f"node must be an int in [0, 2**63), got {node!r}")
    try:
        ticks = round((now - rule._epoch) * 1e6)  # _ticks(), inlined: this is the hot path
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"now must be finite unix seconds, got {now!r}") from None
    if ticks < 0:
        ticks = 0
    q = rule.scale
    cap = rule._cap_units
    refill = rule._rate_units * ticks
    spent = q * state._sum
    u = cap + refill - spent - state._w
    level = u if u < cap else cap
    need = cost * q
    if level < need:
        # asking for more than is left: refuse, and leave the bucket alone
        return _tuple_new(Decision, (False, level / q, _wait(rule, now, ticks, u, need))), state
    # admitted. If the bucket was full (U > C), the refill beyond C was wasted:
    # raise W so that U = C right now. Otherwise refill - spent <= W: a no-op.
    w = state._w
    if refill - spent > w:
        w = refill - spent
    c = state._c.copy()
    c[node] = c.get(node, 0) + cost
    new = _new_object(BucketState)  # _make(), inlined
    new._c = c
    new._w = w
    new._sum = state._sum + cost
    return _tuple_new(Decision, (True, (level - need) / q, 0.0)), new


# -- reports: charged after the fact -------------------------------------------


class ReportConflict(ValueError):
    """A report's slot already holds another count: the same id reported with another cost
    (or, with odds of about ``n²/2**64``, another id or a worker slot hashing to it)."""

    def __init__(self, slot: int, have: int, cost: int) -> None:
        super().__init__(f"report slot {slot} already holds {have} tokens, not {cost}")
        self.have = have


_REPORT_KEY = b"bucketstream-report-v1"


def report_slot(report_id: str) -> int:
    """The counter slot of a report id: a keyed 63-bit BLAKE2b of its UTF-8 bytes.

    Reports share the slot space with worker slots (random 63-bit ints); the
    key keeps them apart from anything else hashed into it.
    """
    digest = hashlib.blake2b(report_id.encode("utf-8", "surrogateescape"), digest_size=8, key=_REPORT_KEY).digest()
    return int.from_bytes(digest, "big") >> 1


def debit(state: BucketState, rule: Rule, slot: int, now: float, cost: int) -> BucketState:
    """Charge ``cost`` tokens unconditionally, once per ``slot``: the bucket may go into debt.

    For a report (a cost known after the response) with slot :func:`report_slot`
    of its id: the slot's counter is *set* to ``cost``, so whoever applies the
    same report, on any worker and any number of times, writes the same counter
    and the join (per-slot max) charges it once. Returns ``state`` itself if the
    slot already holds ``cost`` (a duplicate); :class:`ReportConflict` if it
    holds another count.

    ``W`` is raised exactly as an admission raises it: only if the bucket was
    full (``U > C``), capping the refill at ``C`` just before the debit, as a
    serialized bucket ``level = min(C, level + r·Δt); level -= cost`` does.
    """
    if type(cost) is not int or cost < 1:
        cost = _check_cost(cost)
    if type(slot) is not int or not 0 <= slot < MAX_NODE:
        raise ValueError(f"slot must be an int in [0, 2**63), got {slot!r}")
    have = state._c.get(slot)
    if have is not None:
        if have == cost:
            return state  # already charged: a duplicate changes nothing
        raise ReportConflict(slot, have, cost)
    ticks = _ticks(rule, now)
    # a full bucket (U > C) wasted the refill beyond C: cap it, as an admission does
    w = state._w
    excess = rule._rate_units * ticks - rule.scale * state._sum
    if excess > w:
        w = excess
    c = state._c.copy()
    c[slot] = cost
    return _make(c, w, state._sum + cost)


# -- wire format ---------------------------------------------------------------


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def encode(state: BucketState) -> bytes:
    """The compact, versioned, canonical bytes of ``state`` (see the module docstring)."""
    out = bytearray((_TAG,))
    _put_varint(out, state._w)
    c = state._c
    _put_varint(out, len(c))
    prev = -1
    for node in sorted(c):
        _put_varint(out, node - prev - 1)
        _put_varint(out, c[node] - 1)
        prev = node
    if len(out) > 16 + (len(c) + 1) * 2 * _MAX_VARINT_BYTES:  # pragma: no cover - absurd rules only
        raise CodecError("state too large to encode")
    return bytes(out)


def _get_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    n = 0
    shift = 0
    start = pos
    end = len(data)
    while True:
        if pos >= end:
            raise CodecError(f"truncated: {what} ends after {end - start} byte(s) at offset {start}")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and pos - start > 1:
                raise CodecError(f"non-canonical {what} at offset {start} (padded varint)")
            return n, pos
        shift += 7
        if pos - start >= _MAX_VARINT_BYTES:
            raise CodecError(f"{what} at offset {start} is longer than {_MAX_VARINT_BYTES} bytes")


def decode(data: bytes) -> BucketState:
    """The state that :func:`encode` turned into ``data``; :class:`CodecError` for anything else."""
    state = _decode_well_formed(data)
    return state if state is not None else _decode_strict(data)


def _decode_well_formed(data: bytes) -> BucketState | None:
    """The fast path of :func:`decode`: one pass over the bytes, no error messages.

    Returns None for anything it is not sure of (other types, long input,
    any malformation), which :func:`_decode_strict` then decodes or refuses
    with a message. A worker decodes every state it reads from Kafka, so this
    is on the replication path; the strict decoder is the reference (the tests
    check that both agree on any bytes).
    """
    if type(data) is not bytes or not 3 <= len(data) <= _MAX_VARINT_BYTES or data[0] != _TAG:
        return None  # no varint can be longer than _MAX_VARINT_BYTES in what is left
    vals: list[int] = []
    add = vals.append
    n = shift = 0
    for b in data[1:]:
        if b < 0x80:
            if b == 0 and shift:
                return None  # a padded varint
            add(n | (b << shift))
            n = shift = 0
        else:
            n |= (b & 0x7F) << shift
            shift += 7
    if shift or len(vals) < 2 or len(vals) != 2 + 2 * vals[1]:
        return None  # cut short, or not the number of counters it says
    c: dict[int, int] = {}
    total = 0
    node = -1
    for i in range(2, len(vals), 2):
        node += vals[i] + 1
        v = vals[i + 1] + 1
        c[node] = v
        total += v
    if node >= MAX_NODE:  # node ids only grow: the last is the largest
        return None
    return _make(c, vals[0], total)


def _decode_strict(data: bytes) -> BucketState:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise CodecError("empty input: not a bucket state")
    if data[0] != _TAG:
        raise CodecError(f"unknown type/version byte 0x{data[0]:02x} (expected 0x{_TAG:02x}: bucket state v1)")
    w, pos = _get_varint(data, 1, "W")
    count, pos = _get_varint(data, pos, "counter count")
    if count * 2 > len(data) - pos:
        raise CodecError(f"truncated: {count} counters need at least {count * 2} bytes, {len(data) - pos} left")
    c: dict[int, int] = {}
    total = 0
    node = -1
    for i in range(count):
        gap, pos = _get_varint(data, pos, f"node id #{i}")
        node += gap + 1
        if node >= MAX_NODE:
            raise CodecError(f"node id #{i} is {node}, not below 2**63")
        v, pos = _get_varint(data, pos, f"count #{i}")
        c[node] = v + 1
        total += v + 1
    if pos != len(data):
        raise CodecError(f"{len(data) - pos} trailing byte(s) after the state")
    return _make(c, w, total)
