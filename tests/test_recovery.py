"""Bulk recovery (``bucketstream/recovery.py``) on the real broker with real workers.

The changelog is written straight to Kafka (as the bench does): 30,000 keys,
some written twice, some deleted by a tombstone. A fresh worker loads it in
bulk before Faust's own recovery; a restarted worker loads only what it has
not seen.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from bench.kafka import realistic_state
from bucketstream import crdt
from bucketstream.rules import Rules
from bucketstream.settings import Settings
from bucketstream.topics import changelog_topic, ensure_topics, updates_topic
from tests.helpers import stats

pytestmark = pytest.mark.broker

PARTITIONS = 8
CAPACITY, RATE = 1000.0, 1.0
SETTINGS = {"capacity": CAPACITY, "rate": RATE, "partitions": PARTITIONS,
            "expire_check_interval": 3600}  # no expiry sweep deleting keys during the test


def key_of(user: str) -> bytes:
    return Rules.key(Rules.from_settings(CAPACITY, RATE, None).default, user, None)


def produce(broker, app_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
    """Write records to the app's table changelog, each in its key's partition, in order."""

    async def run():
        s = Settings(broker=broker.url, app_id=app_id, partitions=PARTITIONS)
        await ensure_topics(s)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=1, linger_ms=20)
        await producer.start()
        try:
            futures = [await producer.send(changelog_topic(s), key=k, value=v,
                                           partition=(murmur2(k) & 0x7FFFFFFF) % PARTITIONS)
                       for k, v in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def check_bucket(w, user: str, expected: bytes | None) -> None:
    b = w.bucket(user)
    if expected is None:
        assert b["replica_consumed"] == 0 and b["counters"] == {} and b["wasted"] == 0, (user, b)
        return
    state = crdt.decode(expected)
    assert b["replica_consumed"] == state.consumed, (user, b)
    assert b["counters"] == {str(n): c for n, c in state.counters.items()}, (user, b)
    assert b["wasted"] == state.wasted, (user, b)


def test_fresh_worker_loads_changelog_in_bulk_and_restart_loads_only_the_rest(pool, broker):
    n = 30_000
    rng = random.Random(7)
    rule = Rules.from_settings(CAPACITY, RATE, None).default.rule
    now = time.time()
    values = [crdt.encode(realistic_state(rng, rule, now)) for _ in range(512)]
    records: list[tuple[bytes, bytes | None]] = [(key_of(f"user-{i}"), values[i % len(values)]) for i in range(n)]
    rewritten = [f"user-{i}" for i in range(0, n, 97)]  # a later state for the same key: the last one wins
    deleted = [f"user-{i}" for i in range(5, n, 101)]  # a tombstone: the key is gone
    records += [(key_of(u), values[(i * 13 + 1) % len(values)]) for i, u in enumerate(rewritten)]
    records += [(key_of(u), None) for u in deleted]
    produce(broker, pool.app_id, records)
    latest = {}
    for k, v in records:
        latest[k] = v

    (a,) = pool.start(1, **SETTINGS)
    bulk = stats(a)["bulk_recovery"]
    assert bulk["error"] is None
    assert bulk["records"] == len(records) and bulk["deletes"] == len(deleted)
    assert sorted(bulk["partitions"]) == [str(p) for p in range(PARTITIONS)]
    assert stats(a)["active_keys"] == n - len(deleted)  # single worker: every partition is active
    # Faust's own recovery started at the offsets the bulk load stored: it replayed no event
    assert stats(a)["changelog_lag"]["samples"] == 0
    sample = [f"user-{i}" for i in rng.sample(range(n), 200)] + rewritten[:20] + deleted[:20]
    for user in sample:
        check_bucket(a, user, latest[key_of(user)])

    # a second fresh worker: it too loads everything, and answers for the partitions it holds as standbys
    (b,) = pool.start(1, **SETTINGS)
    sb = stats(b)
    assert sb["bulk_recovery"]["records"] == len(records)
    assert sb["partitions"]["standby"], sb["partitions"]
    assert sb["changelog_lag"]["samples"] == 0
    for user in sample[:60] + deleted[:5]:
        check_bucket(b, user, latest[key_of(user)])

    # while `a` is down, the changelog grows a little; back on its own data dir it loads only that
    a.stop()
    more = [(key_of(f"user-{i}"), values[(i + 5) % len(values)]) for i in (1, 2, 3)]
    more += [(key_of("user-4"), None), (key_of("new-user"), values[0])]
    produce(broker, pool.app_id, more)
    for k, v in more:
        latest[k] = v
    pool.restart(a).wait_ready()
    pool.wait_stable()
    bulk = stats(a)["bulk_recovery"]
    assert bulk["error"] is None
    assert bulk["records"] == len(more) and bulk["deletes"] == 1, bulk
    assert stats(a)["changelog_lag"]["samples"] == 0
    for user in ["user-1", "user-2", "user-3", "user-4", "new-user", *sample[:40]]:
        check_bucket(a, user, latest[key_of(user)])


def test_a_worker_is_ready_only_once_its_view_holds_every_update_the_table_lacks(pool, broker):
    """Updates the merge agents never handled (their worker stopped first), older than the peer
    feed's 120 s window: a restarted worker's first answers already count them, though its
    table gets them only as its merge agent works through the backlog (agents.peer_feed
    starts from the agents' committed offsets, not from the window)."""
    (w,) = pool.start(1, **SETTINGS)
    w.stop()  # the merge agent committed its offsets: everything below is after them
    rule = Rules.from_settings(CAPACITY, RATE, None).default.rule
    now = time.time()
    _, spent = crdt.try_consume(crdt.BucketState(), rule, 12345, now, 900)
    # a backlog for the agent to work through first, then the users the test asks about
    backlog = [(key_of(f"user-{i}"), crdt.encode(spent)) for i in range(20_000)]
    asked = [(key_of(f"late-{i}"), crdt.encode(spent)) for i in range(20)]

    async def run():
        s = Settings(broker=broker.url, app_id=pool.app_id, partitions=PARTITIONS)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            old = int((now - 600) * 1000)  # produced 10 minutes ago, as after a long outage
            futures = [await producer.send(updates_topic(s), key=k, value=v, timestamp_ms=old)
                       for k, v in backlog + asked]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())
    pool.restart(w).wait_ready()
    for i in range(20):
        b = w.bucket(f"late-{i}")
        # 1000 - 900, plus the refill since they were spent; 1000 is a view missing them
        assert b["tokens"] <= 100 + RATE * (time.time() - now), b
