"""The laws of bucketstream.crdt, one claim per test.

Cost on the hot path (CPython 3.11, timeit best of 15, on the shared 2-CPU
dev machine under a load of ~1.8, so read these as upper bounds; a hot key
touched by 3 workers with a month of history, 63-bit slot ids):

    join(replica, own), own ≥ replica (returns own)   0.3-0.5 µs
    join(BOTTOM, own)                                  0.3 µs
    try_consume, admitted                              0.9-1.2 µs
    try_consume, refused (computes retry_after)        0.9 µs
    try_consume(join(replica, own), ...)               2.0 µs
    tokens                                             0.4-0.5 µs
    encode / decode (47 bytes)                         6.5 µs / 10 µs

Times in these tests are whole microseconds ``T`` after the rule's epoch,
turned into unix seconds by :func:`at`; ``test_the_tests_clock_is_exact``
checks that the core reads them back as exactly ``T``. The reference values
(classic bucket, uncapped level) are computed here independently, in exact
rational arithmetic from the rule's public fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bucketstream.crdt import (
    DEFAULT_EPOCH,
    MAX_NODE,
    BucketState,
    CodecError,
    Decision,
    Rule,
    ReportConflict,
    carry_over,
    debit,
    decode,
    encode,
    exact,
    is_full,
    join,
    leq,
    report_slot,
    retry_after,
    tokens,
    try_consume,
)
from bucketstream.crdt import _decode_strict, _decode_well_formed, _ticks
from tests.helpers import Counts, NodeIds, States

BOTTOM = BucketState()
US = 1_000_000
#: Tests that draw whole runs (``Histories``) cost ~10 ms an example: they take half the profile's examples.
runs = settings(max_examples=max(10, settings.default.max_examples // 2))


def at(ticks: int) -> float:
    """Unix seconds ``ticks`` microseconds after the default epoch."""
    return DEFAULT_EPOCH + ticks / US


# -- strategies ------------------------------------------------------------------

# NodeIds, Counts, Wasteds and States (any lattice element) are shared with test_spill.py: tests/helpers.py
Ticks = st.integers(0, 10**13)  # up to ~116 days after the epoch

#: Rules with exact values of every kind the core accepts: ints, floats, fractions.
Capacities = st.one_of(
    st.integers(1, 1000),
    st.floats(0.5, 1e4, allow_nan=False, allow_infinity=False),
    st.fractions(min_value=Fraction(1, 2), max_value=1000, max_denominator=1000),
)
Rates = st.one_of(
    st.integers(1, 1000),
    st.floats(0.01, 1e4, allow_nan=False, allow_infinity=False),
    st.fractions(min_value=Fraction(1, 100), max_value=1000, max_denominator=1000),
)
Rules = st.builds(Rule, capacity=Capacities, rate=Rates)
#: Rules whose bucket refills within seconds to minutes, so that histories see it both empty and full.
LivelyRules = st.builds(
    Rule,
    capacity=st.one_of(st.integers(1, 20), st.floats(0.5, 50), st.fractions(Fraction(1, 2), 50, max_denominator=12)),
    rate=st.one_of(st.integers(1, 100), st.floats(0.1, 100), st.fractions(Fraction(1, 10), 100, max_denominator=12)),
)
Costs = st.integers(1, 4)
#: Gaps between events, µs: often none, often a few ms, sometimes long enough to refill.
Gaps = st.one_of(st.just(0), st.integers(0, 20_000), st.integers(0, 5 * US), st.integers(0, 600 * US))


@st.composite
def raised(draw, state: BucketState) -> BucketState:
    """``state`` with counters and ``W`` raised, maybe new nodes: a state ≥ ``state``, built without ``join``."""
    c = {n: v + draw(st.integers(0, 10**6)) for n, v in state.counters.items()}
    for n, v in draw(st.dictionaries(NodeIds, Counts, max_size=3)).items():
        c[n] = max(c.get(n, 0), v)
    return BucketState(c, state.wasted + draw(st.integers(0, 10**12)))


def ids_other_than(taken: list[int]) -> st.SearchStrategy[int]:
    """Node ids not in ``taken``: ``[0, 2**63 - len(taken))`` mapped onto the rest, skipping the taken ones."""

    def skip(n: int) -> int:
        for t in sorted(taken):
            if n >= t:
                n += 1
        return n

    return st.integers(0, MAX_NODE - 1 - len(taken)).map(skip)


@dataclass
class History:
    rule: Rule
    ids: list[int]  # node id of each replica
    replicas: list[BucketState]  # final states
    snapshots: list[BucketState]  # every state any replica had
    end: int  # ticks of the last event

    @property
    def merged(self) -> BucketState:
        return reduce(join, self.replicas, BOTTOM)


@st.composite
def histories(draw, rule: Rule | None = None, start: int = 0, ids: list[int] | None = None) -> History:
    """A run: a few replicas (one node id each) that spend and hear from each other, at nondecreasing times."""
    if rule is None:
        rule = draw(LivelyRules)
    if ids is None:
        ids = draw(st.lists(NodeIds, min_size=1, max_size=4, unique=True))
    k = len(ids)
    replicas = [BOTTOM] * k
    snapshots = [BOTTOM]
    t = start
    replica = st.integers(0, k - 1)
    ops = draw(st.lists(st.tuples(replica, replica, Gaps, Costs, st.booleans()), max_size=20))
    for i, j, gap, cost, hear in ops:
        t += gap
        if hear:
            replicas[i] = join(replicas[i], replicas[j])
        else:
            _, replicas[i] = try_consume(replicas[i], rule, ids[i], at(t), cost)
        snapshots.append(replicas[i])
    return History(rule, ids, replicas, snapshots, t)


Histories = histories()


# -- independent reference arithmetic ----------------------------------------------


def uncapped(state: BucketState, rule: Rule, ticks: int) -> Fraction:
    """``U = C + r·t - ΣS - W`` in tokens, exactly, from public fields."""
    return (
        exact(rule.capacity)
        + exact(rule.rate) * ticks / US
        - state.consumed
        - Fraction(state.wasted, rule.scale)
    )


def full_from(state: BucketState, rule: Rule) -> int:
    """The first whole µs at which ``state`` alone is full."""
    return max(0, math.ceil((state.consumed + Fraction(state.wasted, rule.scale)) * US / exact(rule.rate)))


@given(Rules, States, Ticks)
def test_tokens_is_the_exact_level_rounded_once(rule, s, ticks):
    """``tokens`` is ``min(C, U)`` computed exactly and rounded once (so exact claims may use ``uncapped``)."""
    assert tokens(s, rule, at(ticks)) == float(min(exact(rule.capacity), uncapped(s, rule, ticks)))
    assert is_full(s, rule, at(ticks)) == (uncapped(s, rule, ticks) >= exact(rule.capacity))


# -- the tests' clock -------------------------------------------------------------------


@given(Ticks)
def test_the_tests_clock_is_exact(ticks):
    """Every time these tests use is read back by the core as exactly the microsecond it names."""
    assert _ticks(Rule(1, 1), at(ticks)) == ticks


@given(st.floats(1e-6, 1e9))
def test_a_float_rule_parameter_means_the_decimal_it_prints_as(x):
    """``exact(0.1) == 1/10``: shortest-repr decimals, and still the same float."""
    assert exact(x) == Fraction(repr(x)) and float(exact(x)) == x
    assert exact(0.1) == Fraction(1, 10) and Rule(10, 0.1).scale == 10 * US


@given(Rules)
def test_rule_units_make_capacity_and_a_microsecond_of_refill_whole(rule):
    """What makes the arithmetic exact: C and r·1µs are whole numbers of the rule's units."""
    assert (exact(rule.capacity) * rule.scale).denominator == 1
    assert (exact(rule.rate) * rule.scale / US).denominator == 1


# -- 1. the lattice ------------------------------------------------------------------------


@given(States, States)
def test_join_is_commutative(a, b):
    assert join(a, b) == join(b, a)


@given(States, States, States)
def test_join_is_associative(a, b, c):
    assert join(join(a, b), c) == join(a, join(b, c))


@given(States)
def test_join_is_idempotent(a):
    assert join(a, a) == a
    assert join(a, BucketState(dict(a.counters), a.wasted)) == a  # equal, not identical


@given(States)
def test_bottom_is_the_identity_of_join(a):
    assert join(a, BOTTOM) == a == join(BOTTOM, a)


@given(States, States)
def test_join_is_an_upper_bound(a, b):
    j = join(a, b)
    assert leq(a, j) and leq(b, j)


@given(States, States, st.data())
def test_join_is_the_least_upper_bound(a, b, data):
    """Any state above both (built by raising their pointwise max, not by join) is above the join."""
    top = BucketState(
        {n: max(a.counters.get(n, 0), b.counters.get(n, 0)) for n in {*a.counters, *b.counters}},
        max(a.wasted, b.wasted),
    )
    c = data.draw(raised(top))
    assert leq(a, c) and leq(b, c)
    assert leq(join(a, b), c)


@given(States, st.data())
def test_leq_is_the_order_that_join_defines(a, data):
    """``a ≤ b`` iff ``join(a, b) == b``, for states above ``a`` and for unrelated ones."""
    b = data.draw(st.one_of(raised(a), States))
    assert leq(a, b) == (join(a, b) == b)
    assert leq(a, data.draw(raised(a)))


@given(States, st.data())
def test_join_returns_an_argument_when_it_already_is_the_result(a, data):
    """The fast paths: no new state when nothing changes (the hot path's ``join(replica, own)``)."""
    b = data.draw(raised(a))
    assert join(a, a) is a
    assert join(a, BOTTOM) is a
    assert join(BOTTOM, a) is (BOTTOM if a == BOTTOM else a)  # on a tie, the first argument
    assert join(a, b) is (a if a == b else b)
    assert join(b, a) is b


@given(Rules, States, NodeIds, Ticks, st.integers(1, 2000))
def test_try_consume_only_moves_a_state_up(rule, s, node, ticks, cost):
    decision, s2 = try_consume(s, rule, node, at(ticks), cost)
    assert leq(s, s2)
    if decision.allowed:
        assert s2.counters[node] == s.counters.get(node, 0) + cost
        assert s2.consumed == s.consumed + cost
    else:
        assert s2 is s  # refused: the bucket is left alone


# -- 2. knowing more ---------------------------------------------------------------------


@given(Rules, States, Ticks, st.data())
def test_knowing_more_never_gives_more_tokens(rule, a, ticks, data):
    """At any time (also before either state was made), a state above ``a`` holds at most ``a``'s tokens."""
    b = data.draw(raised(a))
    assert tokens(b, rule, at(ticks)) <= tokens(a, rule, at(ticks))
    assert retry_after(b, rule, at(ticks)) >= retry_after(a, rule, at(ticks))
    assert not is_full(b, rule, at(ticks)) or is_full(a, rule, at(ticks))


@runs
@given(Histories, Gaps)
def test_hearing_from_others_never_gives_more_tokens(h, later):
    """Over real runs: the merge of all replicas holds no more than any replica, now or later."""
    now = at(h.end + later)
    merged = h.merged
    for r in h.replicas:
        assert tokens(merged, h.rule, now) <= tokens(r, h.rule, now)


@runs
@given(Histories)
def test_joining_a_stale_copy_of_yourself_changes_nothing(h):
    """A replica that hears an old version of itself (a replay) stays exactly as it is."""
    for old in h.snapshots:
        for r in h.replicas:
            if leq(old, r):
                assert join(r, old) == r


# -- 3. one node = the classic token bucket --------------------------------------------


@given(Rules, st.lists(st.tuples(Gaps, st.integers(1, 60)), min_size=1, max_size=40), NodeIds)
def test_one_node_is_exactly_the_classic_token_bucket(rule, schedule, node):
    """Same decisions and the same remaining tokens, exactly, as a textbook bucket over any schedule.

    The reference is ``level = min(C, level + r·Δt)``, spend if ``level ≥
    cost``, computed in exact rationals; times are whole microseconds (the
    core's resolution), so there is no epsilon anywhere: ``remaining`` is the
    same rational rounded once to a float on both sides.
    """
    cap, rate = exact(rule.capacity), exact(rule.rate)
    level, last = cap, 0
    state, t = BOTTOM, 0
    for gap, cost in schedule:
        t += gap
        level = min(cap, level + rate * (t - last) / US)
        last = t
        decision, state = try_consume(state, rule, node, at(t), cost)
        allowed = level >= cost
        if allowed:
            level -= cost
        assert decision.allowed == allowed
        assert decision.remaining == float(level)
        assert tokens(state, rule, at(t)) == float(level)


@given(Rules, States, Ticks, Costs)
def test_refused_request_leaves_the_state_alone_and_says_when_to_retry(rule, s, ticks, cost):
    decision, s2 = try_consume(s, rule, 1, at(ticks), cost)
    if decision.allowed:
        assert decision.retry_after == 0.0
    else:
        assert s2 is s
        assert decision.retry_after == retry_after(s, rule, at(ticks), cost) > 0
        assert decision.remaining == tokens(s, rule, at(ticks))


@runs
@given(Histories, Gaps, Costs)
def test_retry_after_is_exactly_when_the_tokens_exist(h, later, cost):
    """Waiting ``retry_after`` gives ``cost`` tokens; a microsecond less does not (debts included)."""
    rule, s = h.rule, h.merged
    now = at(h.end + later)
    wait = retry_after(s, rule, now, cost)
    if cost > rule.capacity:
        assert wait == math.inf
    elif wait == 0:
        assert tokens(s, rule, now) >= cost
    else:
        assert tokens(s, rule, now + wait) >= cost
        assert tokens(s, rule, now + wait - 1e-6) < cost
        assert try_consume(s, rule, 5, now + wait, cost)[0].allowed


def test_cost_above_capacity_is_refused_for_ever():
    rule = Rule(10, 1)
    decision, s = try_consume(BOTTOM, rule, 1, at(0), 11)
    assert decision == Decision(False, 10.0, math.inf) and s is BOTTOM


# -- 4. deletion ------------------------------------------------------------------------------


@st.composite
def deletions(draw) -> tuple[History, int]:
    """A run, and a deletion time ``t_d`` at which the merged bucket has been full for ≥ C/r."""
    h = draw(Histories)
    became_full = max(full_from(h.merged, h.rule), h.end)
    t_d = became_full + math.ceil(exact(h.rule.capacity) / exact(h.rule.rate) * US) + draw(Gaps)
    return h, t_d


Deletions = deletions()


@runs
@given(Deletions, Gaps)
def test_every_stale_copy_of_a_deleted_bucket_is_full_for_ever(deletion, later):
    """Any state the run ever had (all ≤ the deleted one) is full at the deletion and at every time after."""
    h, t_d = deletion
    for old in h.snapshots:
        assert is_full(old, h.rule, at(t_d))
        assert is_full(old, h.rule, at(t_d + later))
        assert tokens(old, h.rule, at(t_d + later)) == float(exact(h.rule.capacity))


@runs
@given(Deletions, st.lists(st.tuples(Gaps, Costs, st.sampled_from([0, 1, 2])), max_size=20))
def test_a_stale_copy_joined_with_nothing_answers_exactly_like_bottom(deletion, schedule):
    """No lock-out and no extra tokens: after the deletion, a stale copy and bottom give the same answers for ever."""
    h, t_d = deletion
    stale = join(h.merged, BOTTOM)
    fresh = BOTTOM
    t = t_d
    for gap, cost, node in schedule:
        t += gap
        d1, stale = try_consume(stale, h.rule, node, at(t), cost)
        d2, fresh = try_consume(fresh, h.rule, node, at(t), cost)
        assert d1 == d2


@st.composite
def after_deletion(draw) -> tuple[History, int, History]:
    """A deleted run ``X`` and a new run ``Y`` from bottom after the deletion (its nodes may be ``X``'s, too)."""
    h, t_d = draw(Deletions)
    ids = draw(st.lists(st.one_of(st.sampled_from(h.ids), NodeIds), min_size=1, max_size=3, unique=True))
    y = draw(histories(rule=h.rule, start=t_d + draw(Gaps), ids=ids))
    return h, t_d, y


@runs
@given(after_deletion(), Gaps)
def test_a_stale_copy_joined_into_a_new_bucket_never_gives_extra_tokens(case, later):
    h, t_d, y = case
    now = at(y.end + later)
    for x in h.snapshots:
        assert tokens(join(x, y.merged), h.rule, now) <= tokens(y.merged, h.rule, now)


@runs
@given(after_deletion(), Gaps)
def test_a_stale_copy_joined_into_a_new_bucket_locks_out_at_most_its_own_consumption(case, later):
    """The known caveat, bounded: at most ``ΣS_X`` tokens fewer than the new bucket ``Y`` alone (exact levels)."""
    h, t_d, y = case
    now = y.end + later
    cap = exact(h.rule.capacity)
    alone = min(cap, uncapped(y.merged, h.rule, now))
    for x in h.snapshots:
        assert min(cap, uncapped(join(x, y.merged), h.rule, now)) >= alone - x.consumed


@runs
@given(after_deletion(), Gaps)
def test_a_lock_out_after_deletion_ends_within_consumed_over_rate(case, later):
    """Whenever ``Y`` alone is full, the join with a stale ``X`` is full ``ΣS_X / r`` seconds later."""
    h, t_d, y = case
    t = y.end + later
    for x in h.snapshots:
        if is_full(y.merged, h.rule, at(t)):
            delay = math.ceil(x.consumed * US / exact(h.rule.rate))
            assert is_full(join(x, y.merged), h.rule, at(t + delay))


@runs
@given(Deletions, st.data())
def test_the_lock_out_after_deletion_is_real_and_exactly_the_stale_consumption(deletion, data):
    """Pins the effect: a new bucket on other nodes, joined with the stale copy, loses exactly ``ΣS_X`` of its level.

    This is the behaviour the system layer must mitigate (see the module
    docstring); a model change that removes it must change this test.
    """
    h, t_d = deletion
    ids = data.draw(st.lists(ids_other_than(h.ids), min_size=1, max_size=3, unique=True))
    y = data.draw(histories(rule=h.rule, start=t_d + data.draw(Gaps), ids=ids))
    x = h.merged
    now = y.end + data.draw(Gaps)
    if y.merged.consumed:  # Y has spent since the deletion: its W counts from then
        expect = min(exact(h.rule.capacity), uncapped(y.merged, h.rule, now) - x.consumed)
    else:  # Y is bottom: the join is X, full
        expect = exact(h.rule.capacity)
    assert tokens(join(x, y.merged), h.rule, at(now)) == float(expect)


def test_the_lock_out_after_deletion_in_numbers():
    """C = 10, r = 10/s: 10 spent at t=0, deleted at t=2 s, a new bucket spends 1 at t=3 s: the stale copy costs 10."""
    rule = Rule(10, 10)
    x = BOTTOM
    for _ in range(10):
        _, x = try_consume(x, rule, 1, at(0))
    assert is_full(x, rule, at(2 * US))
    _, y = try_consume(BOTTOM, rule, 2, at(3 * US))
    assert tokens(y, rule, at(3 * US)) == 9.0
    assert tokens(join(x, y), rule, at(3 * US)) == -1.0  # locked out ...
    assert is_full(join(x, y), rule, at(3 * US + 11 * US // 10))  # ... for (10 + 1) / r seconds


# -- 5. the wire format ---------------------------------------------------------------------


@given(States)
def test_decode_inverts_encode(s):
    assert decode(encode(s)) == s


@given(
    st.lists(st.integers(0, MAX_NODE - 1), min_size=3, max_size=3, unique=True),
    st.lists(st.integers(1, 2**34), min_size=3, max_size=3),
    st.integers(0, 2**63 - 1),
)
def test_a_bucket_touched_by_three_nodes_encodes_in_at_most_64_bytes(ids, counts, w):
    """63-bit slot ids, counters up to 1.7e10 tokens, W up to 2**63 units (C=10, r=1000/s for 10 years is 3e17)."""
    s = BucketState(dict(zip(ids, counts)), w)
    assert len(encode(s)) <= 64


@given(States)
def test_every_truncation_of_an_encoding_is_refused(s):
    data = encode(s)
    for k in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:k])


@given(States, st.binary(min_size=1, max_size=20))
def test_trailing_bytes_are_refused(s, extra):
    with pytest.raises(CodecError, match="trailing"):
        decode(encode(s) + extra)


@given(States, st.integers(0, 254).map(lambda b: b if b < 0xB1 else b + 1))
def test_other_types_and_versions_are_refused(s, tag):
    with pytest.raises(CodecError, match="version"):
        decode(bytes([tag]) + encode(s)[1:])


@given(st.one_of(st.binary(max_size=80), st.binary(max_size=80).map(lambda b: b"\xb1" + b)))
def test_any_bytes_decode_to_their_one_state_or_are_refused(data):
    """Garbage never decodes to something else: a state decoded from bytes encodes back to the same bytes."""
    try:
        s = decode(data)
    except CodecError:
        return
    assert encode(s) == data


@given(st.one_of(
    States.map(encode),
    st.binary(max_size=80),
    st.binary(max_size=80).map(lambda b: b"\xb1" + b),
    st.tuples(States.map(encode), st.integers(0, 79), st.integers(0, 255)).map(
        lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1:]),  # one byte changed
))
@example(b"\xb1\x80\x00\x00")  # W padded
@example(b"\xb1\x00\x01\x00\x80\x00")  # a count padded
@example(b"\xb1\x00\x01" + b"\x80" * 9 + b"\x01" + b"\x00")  # node id 2**63
@example(b"\xb1\x00\x02\x00\x00")  # two counters promised, one given
@example(b"\xb1" + b"\xff" * 600 + b"\x01\x00")  # a varint longer than the limit
def test_the_fast_decoder_agrees_with_the_strict_one(data):
    """``decode`` tries a one-pass decoder first: it may pass (None) but never differs."""
    fast = _decode_well_formed(data)
    try:
        strict = _decode_strict(data)
    except CodecError:
        assert fast is None
        return
    assert fast is None or fast == strict


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        ("\xb1\x00\x00", "expected bytes"),
        (None, "expected bytes"),
        (b"\xb1\x80\x00\x00", "non-canonical"),  # W padded
        (b"\xb1\x00\x01" + b"\x80" * 9 + b"\x01" + b"\x00", "not below 2\\*\\*63"),  # node id 2**63
        (b"\xb1\x00\x05\x00", "truncated"),  # five counters promised, none given
        (b"\xb1" + b"\xff" * 600, "longer than"),
    ],
)
def test_malformed_examples_are_refused_with_a_clear_message(data, message):
    with pytest.raises(CodecError, match=message):
        decode(data)


def test_the_largest_node_id_round_trips():
    s = BucketState({MAX_NODE - 1: 1, 0: 2})
    assert decode(encode(s)) == s


# -- 6. replays and reordering -----------------------------------------------------------------


@given(st.lists(States, min_size=1, max_size=6), st.data())
def test_delivery_order_and_duplicates_change_nothing(states, data):
    """Joining any permutation of a multiset of whole states (at-least-once, reordered) gives one result."""
    dupes = data.draw(st.lists(st.sampled_from(states), max_size=6))
    delivered = data.draw(st.permutations(states + dupes))
    assert reduce(join, delivered, BOTTOM) == reduce(join, states, BOTTOM)


# -- arguments, values ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["capacity", "rate"])
@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.5, math.inf, -math.inf, math.nan, True, False, "10", None, 1j])
def test_rule_refuses_values_that_are_not_positive_finite_numbers(field, bad):
    kwargs = {"capacity": 10, "rate": 1, field: bad}
    with pytest.raises(ValueError, match=f"Rule.{field} .*{repr(bad)[:3]}"):
        Rule(**kwargs)


@pytest.mark.parametrize("bad", [math.inf, math.nan, True, "2025", None])
def test_rule_refuses_an_epoch_that_is_not_finite_seconds(bad):
    with pytest.raises(ValueError, match="Rule.epoch"):
        Rule(10, 1, bad)


@pytest.mark.parametrize("cost", [0, -1, 1.0, 1.5, True, "1", None])
def test_cost_must_be_a_positive_int(cost):
    with pytest.raises(ValueError, match="cost"):
        try_consume(BOTTOM, Rule(10, 1), 1, at(0), cost)
    with pytest.raises(ValueError, match="cost"):
        retry_after(BOTTOM, Rule(10, 1), at(0), cost)


@pytest.mark.parametrize("node", [-1, MAX_NODE, 1.0, True, "1", None])
def test_node_must_be_a_63_bit_slot_id(node):
    with pytest.raises(ValueError, match="node"):
        try_consume(BOTTOM, Rule(10, 1), node, at(0))


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, "now", None])
def test_now_must_be_finite_seconds(now):
    for call in (lambda: try_consume(BOTTOM, Rule(10, 1), 1, now), lambda: tokens(BOTTOM, Rule(10, 1), now)):
        with pytest.raises(ValueError, match="now"):
            call()


def test_time_before_the_epoch_counts_as_the_epoch():
    rule = Rule(10, 1)
    assert tokens(BOTTOM, rule, DEFAULT_EPOCH - 86400) == 10.0
    _, s = try_consume(BOTTOM, rule, 1, DEFAULT_EPOCH - 5)
    assert tokens(s, rule, DEFAULT_EPOCH - 1) == 9.0
    assert retry_after(BOTTOM, rule, DEFAULT_EPOCH - 5, 10) == 0.0


@pytest.mark.parametrize(
    "counters, wasted",
    [
        ({-1: 1}, 0),
        ({MAX_NODE: 1}, 0),
        ({True: 1}, 0),
        ({1: -1}, 0),
        ({1: 1.0}, 0),
        ({}, -1),
        ({}, 1.5),
        ([(1, 1), (1, 2)], 0),
    ],
)
def test_state_refuses_what_is_not_a_lattice_element(counters, wasted):
    with pytest.raises(ValueError):
        BucketState(counters, wasted)


@given(States)
def test_states_are_values(s):
    """Equal states are equal and hash alike however they were built; zero counters are the same as none."""
    twin = BucketState(list(s.counters.items()) + [(12345, 0)] * (12345 not in s.counters), s.wasted)
    assert twin == s and hash(twin) == hash(s) and len({s, twin}) == 1
    assert s.consumed == sum(s.counters.values())
    with pytest.raises(TypeError):
        s.counters[1] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        s.wasted = 0  # type: ignore[misc]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(States)
def test_states_pickle_and_repr_round_trip(s):
    import pickle

    assert pickle.loads(pickle.dumps(s)) == s
    assert eval(repr(s), {"BucketState": BucketState}) == s


# -- carrying a bucket over to a changed rule ---------------------------------------


def exact_uncapped(state: BucketState, rule: Rule, ticks: int) -> Fraction:
    """U in tokens, from the rule's public fields, in exact arithmetic."""
    return exact(rule.capacity) + exact(rule.rate) * Fraction(ticks, US) - state.consumed \
        - Fraction(state.wasted, rule.scale)


@given(States, LivelyRules, LivelyRules, Ticks)
def test_a_carried_bucket_keeps_its_level_never_more(old, old_rule, new_rule, t):
    """A rule change never hands out a fresh burst: at the change the new bucket
    holds what the old one held (capped at the new capacity), rounded down by
    less than one of the new rule's units."""
    level = min(exact(new_rule.capacity), exact(old_rule.capacity), exact_uncapped(old, old_rule, t))
    carried = carry_over(old, old_rule, new_rule, at(t))
    if level >= exact(new_rule.capacity):
        assert carried == BOTTOM
        return
    assert carried.consumed == 0 and carried.counters == {}
    u = exact_uncapped(carried, new_rule, t)
    assert level - Fraction(1, new_rule.scale) < u <= level
    assert tokens(carried, new_rule, at(t)) <= max(tokens(old, old_rule, at(t)), 0) or u < 0


@given(States, LivelyRules, LivelyRules, Ticks, st.integers(0, 10**9))
def test_a_carried_bucket_refills_at_the_new_rate(old, old_rule, new_rule, t, dt):
    carried = carry_over(old, old_rule, new_rule, at(t))
    expected = min(exact(new_rule.capacity), exact_uncapped(carried, new_rule, t) + exact(new_rule.rate) * Fraction(dt, US))
    assert exact_uncapped(carried, new_rule, t + dt) >= expected or expected == exact(new_rule.capacity)
    assert math.isclose(tokens(carried, new_rule, at(t + dt)), float(expected), rel_tol=1e-9, abs_tol=1e-6)


@given(States, LivelyRules, LivelyRules, Ticks, st.integers(0, 10**8), st.integers(1, 10**6))
def test_carrying_over_later_never_gives_more_when_the_old_bucket_is_untouched(old, old_rule, new_rule, t, dt, k):
    """Two workers carry the same old bucket over at different times: the join
    holds no more than either at any later time (W is a max-register)."""
    early = carry_over(old, old_rule, new_rule, at(t))
    late = carry_over(old, old_rule, new_rule, at(t + dt))
    both = join(early, late)
    later = at(t + dt + k)
    assert tokens(both, new_rule, later) <= min(tokens(early, new_rule, later), tokens(late, new_rule, later))
    if old_rule.rate == new_rule.rate and not is_full(old, old_rule, at(t + dt)):
        # the old bucket refilled at the same rate in between: both carry the same W
        assert abs(early.wasted - late.wasted) <= new_rule.scale


@given(States, LivelyRules, LivelyRules, Ticks)
def test_carried_states_round_trip_through_the_codec(old, old_rule, new_rule, t):
    carried = carry_over(old, old_rule, new_rule, at(t))
    assert decode(encode(carried)) == carried


# -- reports: debit, charged once per id --------------------------------------------------


@given(Rules, st.lists(st.tuples(Gaps, st.integers(1, 60), st.booleans()), min_size=1, max_size=40), NodeIds)
def test_admissions_and_debits_on_one_node_are_exactly_a_serialized_bucket(rule, schedule, node):
    """Debits (reports) interleaved with admissions match ``level = min(C, level + r·Δt)``,
    admit if ``level ≥ cost``, debit always (into debt): exactly, as for admissions alone.

    This is the check of ``W`` for an unconditional debit: raising it on a bucket that
    was not full would show up as fewer tokens here, not raising it on a full one as more.
    """
    cap, rate = exact(rule.capacity), exact(rule.rate)
    level, last = cap, 0
    state, t = BOTTOM, 0
    for i, (gap, cost, report) in enumerate(schedule):
        t += gap
        level = min(cap, level + rate * (t - last) / US)
        last = t
        if report:
            state = debit(state, rule, report_slot(f"report-{i}"), at(t), cost)
            level -= cost
        else:
            decision, state = try_consume(state, rule, node, at(t), cost)
            assert decision.allowed == (level >= cost)
            if decision.allowed:
                level -= cost
        assert tokens(state, rule, at(t)) == float(level)


@given(Rules, States, Ticks, Costs, st.text(min_size=1, max_size=20))
def test_a_debit_only_moves_a_state_up_and_raises_w_only_on_a_full_bucket(rule, s, ticks, cost, rid):
    slot = report_slot(rid)
    if slot in s.counters:
        return
    s2 = debit(s, rule, slot, at(ticks), cost)
    assert leq(s, s2) and s2.consumed == s.consumed + cost and s2.counters[slot] == cost
    full = uncapped(s, rule, ticks) > exact(rule.capacity)
    assert (s2.wasted > s.wasted) == full
    if full:
        assert uncapped(s2, rule, ticks) == exact(rule.capacity) - cost


@given(Histories, st.integers(0, 10**7), st.integers(0, 10**7), Costs, st.text(min_size=1, max_size=20))
def test_the_same_report_applied_by_two_workers_is_charged_once(h, gap1, gap2, cost, rid):
    """Two workers that have not heard of each other's application both set the id's slot to
    ``cost``: the join is charged ``cost`` once. Placed at the later of the two times at
    worst, so it holds at most ``r·(t2 - t1)`` fewer tokens than the first alone, never more."""
    slot = report_slot(rid)
    base = h.merged
    if slot in base.counters:
        return
    t1, t2 = h.end + gap1, h.end + gap1 + gap2
    a = debit(base, h.rule, slot, at(t1), cost)
    b = debit(base, h.rule, slot, at(t2), cost)
    both = join(a, b)
    assert both.consumed == base.consumed + cost
    assert debit(both, h.rule, slot, at(t2), cost) is both  # a third copy: nothing
    cap = exact(h.rule.capacity)
    for t in (t2, t2 + 10 * US):
        first_alone = min(cap, uncapped(a, h.rule, t))
        level = min(cap, uncapped(both, h.rule, t))
        assert first_alone - min(cost, exact(h.rule.rate) * (t2 - t1) / US) <= level <= first_alone


@given(Histories, Costs, Costs)
def test_different_report_ids_are_charged_twice(h, c1, c2):
    base = h.merged
    s1, s2 = report_slot("id-1"), report_slot("id-2")
    assert s1 != s2
    a = debit(base, h.rule, s1, at(h.end), c1)
    b = debit(base, h.rule, s2, at(h.end), c2)
    assert join(a, b).consumed == base.consumed + c1 + c2


def test_a_report_id_with_another_cost_is_a_conflict():
    rule = Rule(10, 1)
    slot = report_slot("r1")
    s = debit(BOTTOM, rule, slot, at(0), 3)
    assert debit(s, rule, slot, at(5), 3) is s
    with pytest.raises(ReportConflict, match="holds 3 tokens, not 4"):
        debit(s, rule, slot, at(5), 4)


def test_a_debt_refuses_until_refill_repays_it():
    rule = Rule(10, 1)  # full at 0
    s = debit(BOTTOM, rule, report_slot("big"), at(0), 15)  # level -5
    assert tokens(s, rule, at(0)) == -5
    decision, s2 = try_consume(s, rule, 1, at(5_900_000), 1)  # level 0.9
    assert not decision.allowed and s2 is s
    assert decision.retry_after == pytest.approx(0.1)
    decision, _ = try_consume(s, rule, 1, at(6_000_000), 1)
    assert decision.allowed


@given(st.text(max_size=50))
def test_report_slots_are_63_bit_and_deterministic(rid):
    slot = report_slot(rid)
    assert 0 <= slot < MAX_NODE and slot == report_slot(rid)


@pytest.mark.parametrize("cost", [0, -1, 1.5, True, None])
def test_a_debit_cost_must_be_a_positive_int(cost):
    with pytest.raises(ValueError, match="cost"):
        debit(BOTTOM, Rule(10, 1), 1, at(0), cost)
