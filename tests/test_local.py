"""The worker-side Limiter, without Kafka: resends back off while Kafka has a backlog."""

from bucketstream.crdt import BucketState, Rule, encode
from bucketstream.local import Limiter


def test_unconfirmed_states_are_resent_with_backoff_not_every_tick():
    """A backlog (nothing confirmed for a minute) must not be multiplied by resends:
    the first bench run sent 9 update records per request this way.

    The rule (``Limiter.resend_stale``): a flushed state not yet seen back is marked
    again once more than ``wait`` seconds passed since its first admission, later
    since its last resend; ``wait`` starts at ``resend_after`` and doubles (at most
    600 s). Admitted at 100 s, resend_after 2 s, the timer ticking at 101 ... 160 s:
    after 102 (wait 2) -> 103, after 103 + 4 -> 108, after 108 + 8 -> 117,
    after 117 + 16 -> 134, after 134 + 32 = 166 -> not within the minute.
    (Strictly after: at 102 s exactly 2 s have passed, which is not more than 2.)
    So each of the 100 keys goes out again 4 times, at exactly those ticks: 400 records.
    """
    rule = Rule(1000, 1000)
    limiter = Limiter(1, lambda key: None, resend_after=2.0)
    keys = sorted(f"k{i}".encode() for i in range(100))
    for key in keys:
        limiter.decide(key, rule, 100.0)
    assert len(limiter.take_dirty()) == 100
    resent_at: dict[int, list[bytes]] = {}
    for t in range(101, 161):  # the resend timer ticks once a second
        marked = limiter.resend_stale(float(t))
        dirty = sorted(key for key, _ in limiter.take_dirty())
        assert marked == len(dirty), t
        if dirty:
            resent_at[t] = dirty
    assert list(resent_at) == [103, 108, 117, 134]  # the ticks with resends
    assert all(resent == keys for resent in resent_at.values())  # every key, each time
    assert sum(len(resent) for resent in resent_at.values()) == 400


def test_a_confirmed_state_is_not_resent():
    rule = Rule(10, 1)
    limiter = Limiter(7, lambda key: None)
    limiter.decide(b"k", rule, 100.0)
    ((key, raw),) = limiter.take_dirty()
    limiter.on_replica_changed(key, raw, 100.05)  # our state came back from Kafka
    assert limiter.resend_stale(200.0) == 0 and limiter.own_keys == 0
    assert list(limiter.delays) == [limiter.delays[0]] and 0.04 < limiter.delays[0] < 0.06


def test_a_failed_send_is_sent_again_with_the_next_flush_and_an_acknowledged_one_is_not():
    rule = Rule(10, 1)
    limiter = Limiter(7, lambda key: None)
    for k in (b"a", b"b"):
        limiter.decide(k, rule, 100.0)
    assert sorted(k for k, _ in limiter.take_dirty()) == [b"a", b"b"]
    assert limiter.pending_sends == 2
    limiter.on_sent([b"a"], failed=True, now=100.5)  # the producer gave up on a's batch
    limiter.on_sent([b"b"], failed=False, now=100.5)  # Kafka has b (not yet read back)
    assert limiter.pending_sends == 0
    assert [k for k, _ in limiter.take_dirty()] == [b"a"]
    for t in range(101, 125):  # acknowledged: no resend while Kafka merely lags
        limiter.resend_stale(float(t))
    assert limiter.take_dirty() == []


def test_back_pressure_refuses_only_new_keys_while_too_many_states_are_unconfirmed():
    rule = Rule(10, 1)
    limiter = Limiter(7, lambda key: None, max_unconfirmed=2)
    for k in (b"a", b"b"):
        assert limiter.accepts(k)
        limiter.decide(k, rule, 100.0)
    assert not limiter.accepts(b"c")  # new: would add to the backlog
    assert limiter.accepts(b"a")  # held already: its next flush is one message anyway
    for key, raw in limiter.take_dirty():
        limiter.on_replica_changed(key, raw, 100.05)  # Kafka shows them: the backlog is gone
    assert limiter.own_keys == 0 and limiter.accepts(b"c")


def test_the_decoded_cache_is_bounded_and_evicts_the_least_recently_read_key():
    """A key read again is not the next to go: a hot key is not re-read from RocksDB (which
    may lag the peer feed) just because many new users arrived after it first did."""
    reads = []
    stored = encode(BucketState({1: 3}))

    def read(key):
        reads.append(key)
        return stored  # every key is in the table

    limiter = Limiter(7, read, cache_size=3)
    for k in (b"a", b"b", b"c"):
        limiter.replica(k)
    limiter.replica(b"a")  # read again: now the most recent
    limiter.replica(b"d")  # full: b, the least recently read, goes
    assert limiter.cached_keys == 3
    assert [limiter.is_cached(k) for k in (b"a", b"b", b"c", b"d")] == [True, False, True, True]
    reads.clear()
    for _ in range(1000):  # a stream of keys read once never grows it, and never evicts the hot key
        limiter.replica(b"a")
        limiter.replica(f"new{len(reads)}".encode())
    assert limiter.cached_keys == 3 and limiter.is_cached(b"a") and b"a" not in reads


def test_a_key_the_table_lacks_is_cached_only_once_this_worker_holds_state_of_it():
    """Users seen once (the most common request) leave the cache alone; from a user's second
    request on, its absence is cached like any state."""
    reads = []
    limiter = Limiter(7, lambda key: reads.append(key), cache_size=3)
    rule = Rule(10, 1)
    limiter.replica(b"hot")
    limiter.decide(b"hot", rule, 100.0)  # admitted: this worker now holds state of it
    limiter.decide(b"hot", rule, 100.1)
    limiter.decide(b"hot", rule, 100.2)
    assert limiter.is_cached(b"hot") and reads.count(b"hot") == 3  # twice before its own state, then cached
    for i in range(100):  # new users, one request each, admitted
        assert limiter.decide(f"new{i}".encode(), rule, 101.0).allowed
    assert limiter.cached_keys == 1 and limiter.is_cached(b"hot")
    limiter.replica(b"never")  # a read alone (GET /bucket) caches nothing either
    limiter.replica(b"never")
    assert not limiter.is_cached(b"never") and reads.count(b"never") == 2


def test_states_from_the_peer_feed_are_cached_within_the_bound():
    """What another worker published is joined into the cache even for a key this worker never
    read, and the cache still holds at most ``cache_size`` keys."""
    limiter = Limiter(7, lambda key: None, cache_size=3)
    for i in range(10):
        limiter.on_peer_state(f"peer{i}".encode(), BucketState({2: 4}), 100.0)
    assert limiter.cached_keys == 3
    assert limiter.is_cached(b"peer9") and not limiter.is_cached(b"peer0")
    assert limiter.view(b"peer9") == BucketState({2: 4})
