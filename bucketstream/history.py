"""The history of each rule's versions, kept in Kafka (compacted topic ``<app>-rules``).

At start-up a worker reads the whole topic (one partition; one small record
per rule name), appends the versions of its own rules that are not the latest
recorded, and hands the history to ``Rules.adopt_history``. From then on a
bucket of a changed rule that does not exist yet starts from the level of the
same bucket under the previous version (``tables``), so a rule change never
hands out a fresh burst.

Two workers starting with the same new rules at once both append the same
version: the records differ only in the ``until`` time of the old version,
and the last write wins. Nothing here is on the request path.
"""

from __future__ import annotations

import json
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bucketstream.rules import Rules
from bucketstream.settings import ConfigError, Settings
from bucketstream import kafka_auth
from bucketstream.topics import read_to_end, rules_topic

log = logging.getLogger(__name__)


async def read_history(settings: Settings) -> dict[str, list[dict]]:
    """Rule name -> recorded versions (oldest first), from the whole topic."""
    consumer = AIOKafkaConsumer(**kafka_auth.client_kwargs(settings), group_id=None,
                                enable_auto_commit=False, client_id=f"{settings.node_id}-rules")
    await consumer.start()
    try:
        tp = TopicPartition(rules_topic(settings), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        recorded: dict[str, list[dict]] = {}

        def take(_tp: TopicPartition, records: list) -> None:
            for record in records:
                name = record.key.decode("utf-8", "replace") if record.key else ""
                if record.value is None:
                    recorded.pop(name, None)
                    continue
                try:
                    versions = json.loads(record.value)["versions"]
                    if not isinstance(versions, list):
                        raise TypeError("versions is not a list")
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("ignoring a malformed rule history record for %r: %s", name, exc)
                    continue
                recorded[name] = [v for v in versions if isinstance(v, dict)]

        await read_to_end(consumer, [tp], take)
        return recorded
    finally:
        await consumer.stop()


async def sync_history(settings: Settings, rules: Rules) -> dict[str, list[dict]]:
    """Record this worker's rule versions and teach ``rules`` the earlier ones."""
    try:
        recorded = await read_history(settings)
        changed = rules.versions_to_record(recorded, time.time())
        if changed:
            producer = AIOKafkaProducer(**kafka_auth.client_kwargs(settings), acks="all",
                                        client_id=f"{settings.node_id}-rules")
            await producer.start()
            try:
                for name, versions in changed.items():
                    await producer.send_and_wait(rules_topic(settings), key=name.encode(),
                                                 value=json.dumps({"versions": versions}).encode())
            finally:
                await producer.stop()
            for name, versions in changed.items():
                if len(versions) > 1:
                    log.warning("rule %r changed (version %s -> %s): its buckets carry their level over",
                                name, versions[-2]["version"], versions[-1]["version"])
            recorded.update(changed)
    except KafkaError as exc:
        raise ConfigError(f"cannot read or write the rule history on {settings.broker}: {exc}") from None
    rules.adopt_history(recorded)
    return recorded
