"""Prometheus metrics of one worker (``GET /metrics``).

The per-request ones are cheap: decisions are counted into a plain dict of
ints (the event loop is the only writer) and exposed by a collector at scrape
time; the decision-latency histogram times a sample of the decisions (its help
text says which share).
"""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

#: decisions: (policy, outcome, protocol) -> count, since the worker started
_decisions: dict[tuple[str, str, str], int] = {}


class _DecisionCollector:
    def describe(self):
        return [CounterMetricFamily("bucketstream_decisions", _DECISIONS_HELP, labels=_DECISION_LABELS)]

    def collect(self):
        family = CounterMetricFamily("bucketstream_decisions", _DECISIONS_HELP, labels=_DECISION_LABELS)
        for labels, n in list(_decisions.items()):
            family.add_metric(labels, n)
        yield family


_DECISION_LABELS = ["policy", "outcome", "protocol"]
_DECISIONS_HELP = ("Decisions by policy, outcome and protocol (http: POST /protected and /report, rls: Envoy's "
                   "rate limit service over gRPC, one per descriptor); outcomes: allowed, refused, "
                   "shadow_refused: refused by a shadow rule but let through, overloaded: a new key answered 503 "
                   "(rls: UNAVAILABLE) while too many admissions wait for Kafka, reported: a report charged, "
                   "report_duplicate: a report already charged, not_charged: a limit that would admit, of a "
                   "request another limit of its rule refused")
REGISTRY.register(_DecisionCollector())

#: the decision-latency histogram observes one decision in this many (web.protect)
DECISION_SAMPLE = 16
DECISION_SECONDS = Histogram("bucketstream_decision_seconds",
                             f"Time to decide one request (the local CRDT step); sampled: 1 decision in "
                             f"{DECISION_SAMPLE} is timed, so _count is about decisions/{DECISION_SAMPLE}",
                             buckets=(5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3), registry=REGISTRY)
BAD_REQUESTS = Counter("bucketstream_bad_requests", "Requests refused with a 4xx before deciding", ["reason"],
                       registry=REGISTRY)
DELTAS_FLUSHED = Counter("bucketstream_deltas_flushed", "Whole states this worker published to the update topic",
                         registry=REGISTRY)
PUBLISH_FAILURES = Counter("bucketstream_publish_failures", "Whole states whose send to the update topic failed "
                           "(they are sent again with the next flush)", registry=REGISTRY)
UPDATES_MERGED = Counter("bucketstream_updates_merged", "Update-topic messages the merge agent handled, by result "
                         "(coalesced: joined with a later state of the same key in one batch, written once)",
                         ["result"], registry=REGISTRY)
EXPIRY_KEYS_READ = Counter("bucketstream_expiry_keys_read", "Table keys the expiry sweep read (each once per "
                           "pass over the active partitions, docs/operations.md)", registry=REGISTRY)
EXPIRY_SWEEPS = Counter("bucketstream_expiry_sweeps", "Runs of the expiry sweep (one slice of the active "
                        "partitions each)", registry=REGISTRY)
PEER_STATES = Counter("bucketstream_peer_states", "States joined into the local view from the update topic",
                      registry=REGISTRY)
REPLICATION_DELAY = Histogram("bucketstream_replication_delay_seconds",
                              "First admission of a flushed batch until the local view shows it",
                              buckets=(0.005, 0.01, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1, 2, 5, 10),
                              registry=REGISTRY)
LOOP_LAG = Histogram("bucketstream_event_loop_lag_seconds",
                     "How late the event loop woke a 50 ms sleep: time it spent on other work at a stretch "
                     "(every request, flush and merge waits behind it)",
                     buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1), registry=REGISTRY)
GC_PAUSE = Histogram("bucketstream_gc_pause_seconds", "Garbage-collector passes, by generation (2 = full)",
                     ["generation"], buckets=(0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
                     registry=REGISTRY)
RLS_NOT_DECIDED = Counter("bucketstream_rls_not_decided",
                          "Rate limit service calls answered without a decision, by reason (unknown_domain: "
                          "another domain, answered OK with no limit as Envoy's ratelimit does; "
                          "invalid_argument; unavailable: not ready or stopping)", ["reason"], registry=REGISTRY)
KEYS = Gauge("bucketstream_keys", "Keys held, by kind (own_unreflected: own states waiting for Kafka, cached: "
             "decoded replica states, held: keys with admissions kept unpublished, deferred: keys whose admissions are "
             "published late)", ["kind"], registry=REGISTRY)
HELD = Gauge("bucketstream_admissions_held", "Admissions this worker kept to itself since it started, far from "
             "their limit (bucketstream.hold; a counter, exposed as a gauge read at scrape time)", registry=REGISTRY)
DEFERRED = Gauge("bucketstream_admissions_deferred", "Admissions this worker published late since it started, far "
                 "from their limit once their allowance was spent (bucketstream.hold; a counter, exposed as a gauge "
                 "read at scrape time)", registry=REGISTRY)
HEAP_TRIMS = Counter("bucketstream_heap_trims", "Returns of the C allocator's free memory to the system "
                     "(BUCKETSTREAM_HEAP_TRIM_INTERVAL), by whether any was released", ["released"], registry=REGISTRY)
HEAP_MMAP_THRESHOLD = Gauge("bucketstream_heap_mmap_threshold_bytes", "The C allocator's fixed mmap threshold "
                            "(BUCKETSTREAM_HEAP_MMAP_THRESHOLD_KB): blocks this large or larger are returned to the "
                            "system when freed; 0: the allocator's own, which rises by itself", registry=REGISTRY)
GC_YOUNG_THRESHOLD = Gauge("bucketstream_gc_young_threshold", "Python's generation-0 collection threshold in effect "
                           "(BUCKETSTREAM_GC_YOUNG_THRESHOLD, set when the worker becomes ready)", registry=REGISTRY)
READY = Gauge("bucketstream_ready", "1 once the table replicas are recovered and the worker decides", registry=REGISTRY)


def time_gc() -> None:
    """Time every garbage-collector pass into ``GC_PAUSE`` (it holds the whole process)."""
    started = [0.0]
    by_generation = [GC_PAUSE.labels(str(g)) for g in range(3)]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            by_generation[info["generation"]].observe(time.perf_counter() - started[0])

    gc.callbacks.append(callback)


def decision(policy: str, outcome: str, protocol: str = "http") -> None:
    key = (policy, outcome, protocol)
    _decisions[key] = _decisions.get(key, 0) + 1


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
