"""The worker-side Limiter, without Kafka: resends back off while Kafka has a backlog."""

from bucketstream.crdt import Rule
from bucketstream.local import Limiter


def test_unconfirmed_states_are_resent_with_backoff_not_every_tick():
    """A backlog (nothing confirmed for a minute) must not be multiplied by resends:
    the first bench run sent 9 update records per request this way."""
    rule = Rule(1000, 1000)
    limiter = Limiter(1, lambda key: None, resend_after=2.0)
    for i in range(100):
        limiter.decide(f"k{i}".encode(), rule, 100.0)
    assert len(limiter.take_dirty()) == 100
    resent = 0
    for t in range(101, 161):  # the resend timer ticks once a second
        limiter.resend_stale(float(t))
        resent += len(limiter.take_dirty())
    assert 100 <= resent <= 600  # resent at all (a lost send recovers), but at most ~6 times a key


def test_a_confirmed_state_is_not_resent():
    rule = Rule(10, 1)
    limiter = Limiter(7, lambda key: None)
    limiter.decide(b"k", rule, 100.0)
    ((key, raw),) = limiter.take_dirty()
    limiter.on_replica_changed(key, raw, 100.05)  # our state came back from Kafka
    assert limiter.resend_stale(200.0) == 0 and limiter.own_keys == 0
    assert list(limiter.delays) == [limiter.delays[0]] and 0.04 < limiter.delays[0] < 0.06
