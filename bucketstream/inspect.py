"""Look at buckets from outside a worker: the table straight from Kafka, one bucket from a worker.

The logic behind ``bucketstream table dump|top`` and ``bucketstream inspect``
(``cli.py`` only parses options and prints). Nothing here builds a Faust
app, so these tools start fast and need no worker: the table is the compacted changelog topic
``<app_id>-buckets-changelog``, read from its beginning up to the end offsets
seen at start, keeping each key's latest value and dropping tombstones.

A state means nothing without its rule, and the rule's version is the first
field of the key (``<version>|<resource>|<user>``, see ``rules.py``); tokens
are computed only for keys whose version the given rules know.

Errors, all :class:`InspectError`, each with the exit code the CLI uses::

    InspectError
    ├── Unreachable     the broker or the worker does not answer       (exit 1)
    ├── TopicMissing    no changelog topic: wrong app id or broker      (exit 1)
    └── WorkerError     the worker answered with an error status        (exit 2 for 4xx, else 1)
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from bucketstream import crdt
from bucketstream.rules import Rules
from bucketstream.topics import CHANGELOG_SUFFIX, FETCH_MAX_WAIT_MS, read_to_end

__all__ = [
    "InspectError", "Unreachable", "TopicMissing", "WorkerError",
    "Record", "Snapshot", "Row", "Malformed", "Table",
    "read_changelog", "table", "top", "fetch_bucket", "split_key", "display",
]

#: A bucket key as ``table dump`` prints it: 8 hex digits of rule version, resource, user.
_KEY_RE = re.compile(r"^[0-9a-f]{8}\|([^|]*)\|(.+)$", re.S)


class InspectError(Exception):
    """Something these tools cannot look at; the message is one line for the operator."""

    exit_code = 1


class Unreachable(InspectError):
    """The broker or the worker does not answer."""


class TopicMissing(InspectError):
    """The changelog topic of that app id does not exist on that broker."""


class WorkerError(InspectError):
    """The worker answered with an error status (``status``); 4xx exit 2, anything else 1."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = 2 if 400 <= status < 500 else 1


def display(key: bytes) -> str:
    """A key as text: UTF-8, with undecodable bytes shown as ``\\xNN``."""
    return key.decode("utf-8", "backslashreplace")


# -- the changelog, straight from Kafka -------------------------------------------------

@dataclass(frozen=True, slots=True)
class Record:
    """The latest changelog record of one key."""

    value: bytes
    partition: int
    offset: int
    timestamp: float  # unix seconds


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every live key of the changelog up to the end offsets seen at start."""

    topic: str
    partitions: int
    records: dict[bytes, Record]


async def read_changelog(kafka: dict, topic: str, app_id: str, timeout: float = 30.0) -> Snapshot:
    """Read ``topic`` from the beginning to the end offsets captured at start (no consumer group);
    ``kafka`` is ``kafka_auth.client_kwargs(settings)`` (brokers, TLS, SASL).

    Later records are ignored, so the read ends even while workers keep writing.
    Raises :class:`Unreachable` (broker down, or the read took over ``timeout`` s)
    and :class:`TopicMissing` (naming the topic, the app id, and the app ids the
    broker does have).
    """
    where = ",".join(kafka["bootstrap_servers"])
    consumer = AIOKafkaConsumer(**kafka, group_id=None, enable_auto_commit=False,
                                client_id="bucketstream-table-reader", auto_offset_reset="earliest",
                                request_timeout_ms=max(1000, int(timeout * 1000)),
                                # a fetch parked on the broker holds back the offset requests
                                # behind it on the same connection: keep the park short
                                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                                key_deserializer=None, value_deserializer=None)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise Unreachable(f"cannot reach Kafka at {where} (--broker / BUCKETSTREAM_BROKER): {exc}") from exc
    try:
        return await asyncio.wait_for(_read(consumer, topic, app_id, where), timeout)
    except asyncio.TimeoutError:
        raise Unreachable(f"reading {topic} from {where} took longer than {timeout:g} s") from None
    except KafkaError as exc:
        raise Unreachable(f"reading {topic} from {where} failed: {exc}") from exc
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, topic: str, app_id: str, where: str) -> Snapshot:
    topics = await consumer.topics()
    if topic not in topics:
        apps = sorted(t.removesuffix(CHANGELOG_SUFFIX) for t in topics if t.endswith(CHANGELOG_SUFFIX))
        known = f"app ids with a table there: {', '.join(apps)}" if apps else "no bucketstream table there at all"
        raise TopicMissing(f"no topic {topic} on {where}: app id {app_id!r} (--app-id / BUCKETSTREAM_APP_ID) "
                           f"has no table there ({known})")
    consumer.subscribe([topic])  # no group: every partition, once the metadata is in
    while not consumer.assignment():
        await asyncio.sleep(0.02)
    tps = sorted(consumer.assignment())
    await consumer.seek_to_beginning(*tps)
    latest: dict[bytes, Record | None] = {}

    def take(tp, records) -> None:
        for r in records:
            # a tombstone (value None) deletes the key; an empty value is kept (and reported)
            key = r.key if r.key is not None else b""  # never written by Faust; shown, not fatal
            latest[key] = None if r.value is None else Record(r.value, tp.partition, r.offset, r.timestamp / 1000)

    # later records are not part of this snapshot
    await read_to_end(consumer, tps, take, snapshot=True)
    return Snapshot(topic, len(tps), {k: v for k, v in latest.items() if v is not None})


# -- what the records mean ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Row:
    """One bucket of the table, evaluated at ``now`` under the rules that made its key (if known)."""

    key: bytes
    record: Record
    state: crdt.BucketState
    version: str | None
    resource: str | None
    user: str | None
    policy: str | None  # None: no given rule has this key's version
    capacity: float | None
    rate: float | None
    tokens: float | None

    def to_json(self) -> dict:
        return {
            "key": display(self.key), "user": self.user, "resource": self.resource, "version": self.version,
            "policy": self.policy, "consumed": self.state.consumed, "tokens": self.tokens,
            "capacity": self.capacity, "rate": self.rate,
            "counters": {str(n): c for n, c in sorted(self.state.counters.items())}, "wasted": self.state.wasted,
            "partition": self.record.partition, "offset": self.record.offset, "updated": self.record.timestamp,
        }


@dataclass(frozen=True, slots=True)
class Malformed:
    """A changelog value that is not a bucket state."""

    key: bytes
    record: Record
    error: str

    def to_json(self) -> dict:
        return {"key": display(self.key), "partition": self.record.partition, "offset": self.record.offset,
                "error": self.error}


@dataclass
class Table:
    snapshot: Snapshot
    now: float
    rows: list[Row] = field(default_factory=list)  # sorted by key
    malformed: list[Malformed] = field(default_factory=list)

    @property
    def unknown_rules(self) -> int:
        """Rows whose key was made under a rule the given rules do not have."""
        return sum(r.policy is None for r in self.rows)


def table(snapshot: Snapshot, rules: Rules, now: float) -> Table:
    """Decode every value; malformed ones are collected, never raised."""
    out = Table(snapshot, now)
    for key in sorted(snapshot.records):
        record = snapshot.records[key]
        try:
            state = crdt.decode(record.value)
        except crdt.CodecError as exc:
            out.malformed.append(Malformed(key, record, str(exc)))
            continue
        try:
            version, resource, user = Rules.parse_key(key)
        except ValueError:
            version = resource = user = None
        policy = rules.policy_for_key(key)
        if policy is None:
            out.rows.append(Row(key, record, state, version, resource, user, None, None, None, None))
            continue
        rule = policy.rule
        out.rows.append(Row(key, record, state, version, resource, user, policy.name, rule.capacity, rule.rate,
                            crdt.tokens(state, rule, now)))
    return out


def top(rows: list[Row], n: int, by: str = "consumed") -> list[Row]:
    """The ``n`` rows with the most consumption (``by="consumed"``) or the fewest tokens (``by="tokens"``,
    rows of unknown rules left out). Ties: by key."""
    if by == "consumed":
        ranked = sorted(rows, key=lambda r: (-r.state.consumed, r.key))
    elif by == "tokens":
        ranked = sorted((r for r in rows if r.tokens is not None), key=lambda r: (r.tokens, r.key))
    else:
        raise ValueError(f"by must be 'consumed' or 'tokens', got {by!r}")
    return ranked[:n]


# -- one bucket, from a worker --------------------------------------------------------------

def split_key(text: str) -> tuple[str, str | None] | None:
    """(user, resource) of a whole bucket key as ``table dump`` prints it, else None."""
    m = _KEY_RE.match(text)
    return (m.group(2), m.group(1) or None) if m else None


def fetch_bucket(worker: str, user: str, resource: str | None = None, timeout: float = 5.0,
                 limit: str | None = None) -> dict:
    """``GET {worker}/buckets/{user}?debug=1[&resource=R][&limit=L]``: the worker's view of one
    bucket (of one limit, for a rule with several), with the CRDT's internals, as JSON."""
    query = {"debug": "1"} if resource is None else {"debug": "1", "resource": resource}
    if limit is not None:
        query["limit"] = limit
    url = f"{worker.rstrip('/')}/buckets/{urllib.parse.quote(user, safe='')}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise WorkerError(f"worker {worker} answered {exc.code}: {_error_text(exc)}", exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the worker at {worker} (--worker / BUCKETSTREAM_WORKER_URL): "
                          f"{getattr(reason, 'strerror', None) or reason}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise WorkerError(f"worker {worker} answered 200 with a body that is not JSON: {body[:80]!r}", 502) from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    body = exc.read()
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace").strip() or exc.reason
