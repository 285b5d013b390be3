"""The app's Kafka topics, created before anything subscribes to them.

The local broker has topic auto-creation off, and an auto-created topic would
get the wrong partition count or cleanup policy anyway. So the worker creates
its topics itself at first start, and refuses to run against existing
ones that are partitioned differently (the table and the update topic must be
co-partitioned, or a bucket's updates would reach the wrong owner).
"""

from __future__ import annotations

import logging

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bucketstream import kafka_auth
from bucketstream.settings import ConfigError, Settings

log = logging.getLogger(__name__)

UPDATES_RETENTION_MS = 3_600_000  # deltas are transient: the changelog holds the state

#: How long the broker may hold a fetch that has no data, for the table reader
#: (``bucketstream inspect``): a parked fetch holds back the offset requests behind
#: it on the same connection. (The peer feed's is agents.PEER_FETCH_MAX_WAIT_MS.)
FETCH_MAX_WAIT_MS = 20


#: The Faust table's name; Faust names its changelog ``<app_id>-<table>-changelog``.
TABLE = "buckets"
CHANGELOG_SUFFIX = f"-{TABLE}-changelog"


def updates_topic(settings: Settings) -> str:
    return f"{settings.app_id}-updates"


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}{CHANGELOG_SUFFIX}"


def rules_topic(settings: Settings) -> str:
    """Each rule's versions (``bucketstream.history``): one partition, compacted, keyed by rule name."""
    return f"{settings.app_id}-rules"


def wanted(settings: Settings) -> list[NewTopic]:
    common = {"min.insync.replicas": str(min(2, settings.topic_replication))}
    return [
        NewTopic(updates_topic(settings), settings.partitions, settings.topic_replication,
                 topic_configs={"cleanup.policy": "delete", "retention.ms": str(UPDATES_RETENTION_MS), **common}),
        NewTopic(changelog_topic(settings), settings.partitions, settings.topic_replication,
                 topic_configs={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                                "delete.retention.ms": "60000", "segment.ms": "600000", **common}),
        NewTopic(rules_topic(settings), 1, settings.topic_replication,
                 topic_configs={"cleanup.policy": "compact", **common}),
    ]


async def ensure_topics(settings: Settings) -> None:
    """Create the app's topics if missing; fail clearly if they exist partitioned otherwise."""
    admin = AIOKafkaAdminClient(**kafka_auth.client_kwargs(settings), request_timeout_ms=30000)
    try:
        await admin.start()
    except KafkaError as exc:
        raise ConfigError(f"cannot reach Kafka at {settings.broker} (BUCKETSTREAM_BROKER): {exc}") from None
    try:
        brokers = len((await admin.describe_cluster()).get("brokers", []))
        if brokers and settings.topic_replication > brokers:
            raise ConfigError(
                f"BUCKETSTREAM_TOPIC_REPLICATION is {settings.topic_replication} but the cluster at "
                f"{settings.broker} has {brokers} broker(s): use at most {brokers}")
        topics = wanted(settings)
        existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics([t.name for t in topics])
                    if t.get("error_code", 0) == 0}
        missing = [t for t in topics if t.name not in existing]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                response = None  # another worker won the race
            # aiokafka reports per-topic failures in the response, not as exceptions
            for name, code, *rest in getattr(response, "topic_errors", ()):
                if code not in (0, TopicAlreadyExistsError.errno):
                    message = rest[0] if rest and rest[0] else f"Kafka error code {code}"
                    raise ConfigError(f"could not create topic {name} on {settings.broker}: {message}")
            log.info("topics ready: %s", ", ".join(t.name for t in missing))
        for t in topics:
            have = existing.get(t.name)
            if have is not None and have != t.num_partitions:
                raise ConfigError(
                    f"topic {t.name} has {have} partitions but BUCKETSTREAM_PARTITIONS is {t.num_partitions}: "
                    "the table and the update topic must be co-partitioned (use another BUCKETSTREAM_APP_ID "
                    "or the partition count the topics were created with)")
    finally:
        await admin.close()


async def read_to_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                      handle: Callable[[TopicPartition, list], None], *, max_records: int | None = None,
                      snapshot: bool = False) -> dict[TopicPartition, int]:
    """Read the assigned partitions ``tps``, from their positions, up to the end offsets they
    have now, calling ``handle(tp, records)`` with each fetched chunk; returns those end offsets.

    Every fetched record is handed on, also one written after that end (the
    consumer's position is past it: a caller that goes on reading, or keeps the
    position, must not lose it). ``snapshot``: leave those out and stop fetching
    a partition once it is read, for a reader that stops there.

    The one "group-less consumer reads a topic to its end" of the project: the peer
    feed's catch-up, bulk recovery, the rule history and the table reader.
    """
    ends = await consumer.end_offsets(tps)
    behind = {tp: ends[tp] for tp in tps if await consumer.position(tp) < ends[tp]}
    while behind:
        batch = await consumer.getmany(*behind, timeout_ms=1000, max_records=max_records)
        for tp, records in batch.items():
            if snapshot and records and records[-1].offset >= ends[tp]:
                records = [r for r in records if r.offset < ends[tp]]
            if records:
                handle(tp, records)
        for tp in list(behind):
            if await consumer.position(tp) >= behind[tp]:
                del behind[tp]
                if snapshot:
                    consumer.pause(tp)
    return ends
