"""Prometheus metrics of one worker (``GET /metrics``).

Label children are bound once per (policy, outcome) so the hot path pays a
dict lookup and an increment, not a ``labels()`` call.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

DECISIONS = Counter("bucketstream_decisions", "Decisions on /protected by policy and outcome "
                    "(allowed, refused, shadow_refused: refused by a shadow rule but let through)",
                    ["policy", "outcome"], registry=REGISTRY)
DECISION_SECONDS = Histogram("bucketstream_decision_seconds", "Time to decide one request (the local CRDT step)",
                             buckets=(5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3), registry=REGISTRY)
BAD_REQUESTS = Counter("bucketstream_bad_requests", "Requests refused with a 4xx before deciding", ["reason"],
                       registry=REGISTRY)
DELTAS_FLUSHED = Counter("bucketstream_deltas_flushed", "Whole states this worker published to the update topic",
                         registry=REGISTRY)
UPDATES_MERGED = Counter("bucketstream_updates_merged", "Update-topic messages the merge agent handled, by result",
                         ["result"], registry=REGISTRY)
PEER_STATES = Counter("bucketstream_peer_states", "States joined into the local view from the update topic",
                      registry=REGISTRY)
REPLICATION_DELAY = Histogram("bucketstream_replication_delay_seconds",
                              "First admission of a flushed batch until the local view shows it",
                              buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10), registry=REGISTRY)
KEYS = Gauge("bucketstream_keys", "Keys held, by kind (own_unreflected, cached)", ["kind"], registry=REGISTRY)
READY = Gauge("bucketstream_ready", "1 once the table replicas are recovered and the worker decides", registry=REGISTRY)

_decisions: dict[tuple[str, str], object] = {}


def decision(policy: str, outcome: str) -> None:
    child = _decisions.get((policy, outcome))
    if child is None:
        child = _decisions[(policy, outcome)] = DECISIONS.labels(policy, outcome)
    child.inc()


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
