"""Kafka side of the bench: topic end offsets (messages per request) and a
synthetic table changelog (recovery time)."""

from __future__ import annotations

import asyncio
import random
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from bucketstream import crdt, kafka_auth
from bucketstream.rules import Rules
from bucketstream.settings import Settings
from bucketstream.topics import changelog_topic, ensure_topics, updates_topic


def settings_for(bootstrap: str, app_id: str, partitions: int) -> Settings:
    return Settings(broker=f"kafka://{bootstrap}", app_id=app_id, partitions=partitions)


class Probe:
    """Reads topic end offsets through one consumer kept open between calls (on its own event loop)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.loop = asyncio.new_event_loop()
        self.consumer: AIOKafkaConsumer | None = None

    async def _ends(self, topics: list[str]) -> dict[str, int]:
        if self.consumer is None:
            self.consumer = AIOKafkaConsumer(**kafka_auth.client_kwargs(settings_for(self.bootstrap, "probe", 1)),
                                             group_id=None, enable_auto_commit=False)
            await self.consumer.start()
        out = {}
        for topic in topics:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                await self.consumer._client.force_metadata_update()  # a topic created after start
                parts = self.consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = await self.consumer.end_offsets(tps) if tps else {}
            out[topic] = sum(ends.values())
        return out

    def totals(self, app_id: str) -> dict[str, int]:
        """Records ever written to the app's update topic and changelog (sum of end offsets)."""
        s = settings_for(self.bootstrap, app_id, 1)
        ends = self.loop.run_until_complete(self._ends([updates_topic(s), changelog_topic(s)]))
        return {"updates": ends[updates_topic(s)], "changelog": ends[changelog_topic(s)]}

    def close(self) -> None:
        if self.consumer is not None:
            self.loop.run_until_complete(self.consumer.stop())
        self.loop.close()


def realistic_state(rng: random.Random, rule: crdt.Rule, now: float) -> crdt.BucketState:
    """A bucket a few workers have drawn from: 1-3 node counters (63-bit slots) and
    the wasted register set by a real admission sequence."""
    state = crdt.BucketState()
    for _ in range(rng.choice((1, 1, 2, 3))):
        slot = rng.getrandbits(63)
        for t in sorted(now - rng.uniform(0, 60) for _ in range(rng.randint(1, 5))):
            decision, new = crdt.try_consume(state, rule, slot, t)
            if decision.allowed:
                state = new
    return state


async def _produce_changelog(bootstrap: str, app_id: str, partitions: int, n: int, capacity: float, rate: float,
                             log) -> dict:
    settings = settings_for(bootstrap, app_id, partitions)
    await ensure_topics(settings)
    topic = changelog_topic(settings)
    rules = Rules.from_settings(capacity, rate, None)
    policy = rules.policy("x", None)
    rng = random.Random(42)
    now = time.time()
    # a few thousand distinct realistic values, reused: building 1M states through
    # try_consume would take longer than producing them
    values = [crdt.encode(realistic_state(rng, policy.rule, now)) for _ in range(min(n, 4096))]
    producer = AIOKafkaProducer(**kafka_auth.client_kwargs(settings), acks=1, linger_ms=50, max_batch_size=512 * 1024,
                                max_request_size=4 * 1024 * 1024, compression_type=None)
    await producer.start()
    started = time.monotonic()
    key_bytes = value_bytes = 0
    try:
        batches: dict[int, object] = {}
        pending = []
        for i in range(n):
            key = Rules.key(policy, f"user-{i}", None)
            value = values[i % len(values)]
            key_bytes += len(key)
            value_bytes += len(value)
            p = (murmur2(key) & 0x7FFFFFFF) % partitions
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=p))
                batch = batches[p] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            if len(pending) >= 64:
                await asyncio.gather(*pending)
                pending.clear()
            if i and i % 200_000 == 0:
                log(f"  produced {i:,} of {n:,} changelog records")
        for p, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {"keys": n, "produce_seconds": time.monotonic() - started, "key_bytes": key_bytes / n,
            "value_bytes": value_bytes / n, "changelog_topic": topic}


def produce_changelog(bootstrap: str, app_id: str, partitions: int, n: int, capacity: float, rate: float,
                      log=print) -> dict:
    """Create the app's topics and write ``n`` distinct buckets straight to its table changelog."""
    return asyncio.run(_produce_changelog(bootstrap, app_id, partitions, n, capacity, rate, log))
