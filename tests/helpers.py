"""What more than one test module uses, besides the processes of ``tests/cluster.py``.

No ``tests/test_*.py`` imports another one; what they share is here:

* ``States`` and its parts: hypothesis strategies for any lattice element
  (``test_crdt.py``, ``test_spill.py``);
* ``Load``: paced round-robin requests for one key (``test_distributed.py``;
  ``DynamicLoad`` in ``cluster_fixtures.py`` builds on it);
* ``check_bound``: the over-admission bound of docs/design.md, checked with a
  replication delay ``d`` the test states (``stated_delay``), never one the
  workers under test measured;
* the table as Kafka holds it (``read_topic``, ``table_state``): its changelog
  topic read straight from the brokers, the way ``bucketstream table dump``
  does, so a check of the table cannot be met by the workers' peer-fed views.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from hypothesis import strategies as st

from bucketstream.crdt import MAX_NODE, BucketState, decode
from bucketstream.hold import HoldRule

# -- hypothesis strategies for CRDT states ------------------------------------------------------

#: A few fixed ids so that histories and joins often share nodes, and the whole 63-bit range.
NodeIds = st.one_of(st.sampled_from([0, 1, 7, 2**62 + 3, MAX_NODE - 1]), st.integers(0, MAX_NODE - 1))
Counts = st.integers(0, 10**12)
Wasteds = st.integers(0, 10**30)
#: Any lattice element (not necessarily reachable): for the algebra and the codec.
States = st.builds(BucketState, counters=st.dictionaries(NodeIds, Counts, max_size=6), wasted=Wasteds)


# -- paced load and the bound --------------------------------------------------------------------

#: The rule of the hot key in the paced-load tests (test_distributed.py, test_cluster.py):
#: capacity 10 tokens, 5 tokens/s.
C, R = 10, 5.0

#: The replication delay the system is built to: p99 <= 100 ms (README "Replication delay",
#: docs/operations.md). The delay the workers measure runs from an admission to its state
#: in the view, so it includes the wait for the next flush already; ``stated_delay`` adds a
#: flush interval on top anyway, as docs/design.md's d = delay + flush_interval does.
D_TARGET = 0.100
#: ``BUCKETSTREAM_FLUSH_INTERVAL``'s default (bucketstream/settings.py).
DEFAULT_FLUSH_INTERVAL = 0.01


def stated_delay(flush_interval: float = DEFAULT_FLUSH_INTERVAL, fault: float = 0.0) -> float:
    """The ``d`` a test checks the bound with: the target, one flush interval, and what the
    test's own fault is known to add (``fault`` seconds, e.g. a broker's fencing timeout).

    Stated, not measured: a slower system must fail the bound, not loosen it.
    """
    return D_TARGET + flush_interval + fault


def flush_interval_of(pool) -> float:
    """The flush interval a ``WorkerPool``'s workers were configured with."""
    return float(pool.settings.get("flush_interval", DEFAULT_FLUSH_INTERVAL))


@dataclass
class LoadResult:
    start: float
    end: float
    admitted: int = 0
    refused: int = 0
    errors: int = 0
    by_worker: dict = field(default_factory=dict)
    admit_times: list = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.end - self.start


class Load:
    """Paced round-robin POSTs for one key over a list of workers, in a thread."""

    def __init__(self, workers: list, key: str, rate: float, duration: float):
        self.workers, self.key, self.rate, self.duration = workers, key, rate, duration
        self.result = LoadResult(0.0, 0.0)
        self._conns: dict[int, http.client.HTTPConnection] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _post(self, w) -> int | None:
        for attempt in range(2):
            conn = self._conns.get(w.port)
            if conn is None:
                conn = self._conns[w.port] = http.client.HTTPConnection("127.0.0.1", w.port, timeout=2)
            try:
                conn.request("POST", "/protected", headers={"X-User-ID": self.key})
                resp = conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self._conns.pop(w.port, None)
        return None

    def _run(self) -> None:
        r = self.result
        r.start = time.time()
        interval = 1.0 / self.rate
        i = 0
        while True:
            due = r.start + i * interval
            if due - r.start >= self.duration:
                break
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            w = self.workers[i % len(self.workers)]
            status = self._post(w)
            if status == 200:
                r.admitted += 1
                r.admit_times.append(time.time() - r.start)
                r.by_worker[w.port] = r.by_worker.get(w.port, 0) + 1
            elif status == 429:
                r.refused += 1
            else:
                r.errors += 1
            i += 1
        r.end = time.time()
        for conn in self._conns.values():
            conn.close()

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join()

    def run(self) -> LoadResult:
        """Run the whole load in the foreground."""
        self._run()
        return self.result

    def finish(self) -> None:
        """End the run now (the thread stops before its next request)."""
        if self.result.start:
            self.duration = min(self.duration, time.time() - self.result.start)
        self._thread.join()


def measured_delay(workers: list) -> tuple[float, float]:
    """(p50, p99) of replication delay over the workers that measured any: for reports and
    for the guard against a parked fetch, never for the bound (``stated_delay``)."""
    stats = [w.request("GET", "/stats")[2] for w in workers if w.alive]
    delays = [json.loads(s)["replication_delay"] for s in stats]
    p50 = max((d["p50"] or 0.0) for d in delays)
    p99 = max((d["p99"] or 0.0) for d in delays)
    return p50, p99


#: The workers' default publishing rule: what each may keep to itself, and publish late.
HOLD_SHARE, HOLD_BURST, HOLD_DEFER = HoldRule().share, HoldRule().burst, HoldRule().defer


def bound(t: float, n: int, d: float) -> float:
    """docs/design.md sections 2 and 2a, for workers with the default publishing rule:
    admitted(0, t] <= C + R*t + (N-1)*(C + R*d + L) + N*A + share*R*t,
    A = max(1, burst*C), L = defer*C."""
    held = n * max(1.0, HOLD_BURST * C) + HOLD_SHARE * R * t
    return C + R * t + (n - 1) * (C + R * d + HOLD_DEFER * C) + held


def check_upper_bound(result: LoadResult, n: int, d: float) -> None:
    """Every prefix (0, t] of the admissions stays under the bound, with the stated ``d``."""
    for k, t in enumerate(result.admit_times, start=1):
        limit = bound(t, n, d)
        assert k <= limit, f"{k} admitted by t={t:.2f}s, bound {limit:.1f} (N={n}, stated d={d * 1000:.0f} ms)"


def check_bound(result: LoadResult, n: int, d: float) -> None:
    """``check_upper_bound``, and the total reaches 95 % of the ideal C + R*t (nobody locked out)."""
    check_upper_bound(result, n, d)
    ideal = C + R * result.duration
    assert result.admitted >= 0.95 * ideal, f"admitted {result.admitted} < 95% of ideal {ideal:.0f}: locked out"


# -- the table, straight from Kafka -------------------------------------------------------------

def servers_of(kafka) -> list[str]:
    """Bootstrap servers of a ``Broker`` (tests/cluster.py) or a ``KafkaCluster`` (cluster_fixtures.py)."""
    servers = getattr(kafka, "bootstrap_servers", None)
    return list(servers) if servers else [kafka.bootstrap]


def read_topic(kafka, topic: str, timeout: float = 30.0) -> dict[bytes, bytes | None]:
    """Every key's latest value in ``topic`` (``None``: a tombstone), read from the beginning
    up to the end offsets of when the read started; no consumer group, no worker involved.

    Raises ``TimeoutError`` if that takes longer than ``timeout`` seconds (a partial read
    is never returned as if it were the whole topic).
    """
    servers = servers_of(kafka)

    async def read() -> dict[bytes, bytes | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=20,
                                    key_deserializer=None, value_deserializer=None)
        await consumer.start()
        try:
            consumer.subscribe([topic])  # no group: every partition, once the metadata is in
            while not consumer.assignment():
                await asyncio.sleep(0.05)
            tps = sorted(consumer.assignment())
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            latest: dict[bytes, bytes | None] = {}
            pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset < ends[tp]:  # later records are not part of this read
                            latest[r.key] = r.value
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            return latest
        finally:
            await consumer.stop()

    async def bounded():
        try:
            return await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"reading {topic} took longer than {timeout} s") from None

    return asyncio.run(bounded())


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-buckets-changelog"


def bucket_key(worker, user: str) -> bytes:
    """The table key of ``user``'s default bucket (``<rule version>|<resource>|<user>``), as a worker names it."""
    return worker.bucket(user)["key"].encode("utf-8", "surrogateescape")


def table_state(kafka, app_id: str, key: bytes) -> BucketState | None:
    """The table's merged state of ``key``: its latest record in the changelog topic in Kafka
    (what the merge agent wrote; ``None`` if the table has no such key)."""
    raw = read_topic(kafka, changelog_topic(app_id)).get(key)
    return None if raw is None else decode(raw)


def table_consumed(kafka, app_id: str, key: bytes) -> int | None:
    """Tokens the table counts as consumed for ``key`` (``None``: not in the table)."""
    state = table_state(kafka, app_id, key)
    return None if state is None else state.consumed


def stats(worker) -> dict:
    """A worker's ``GET /stats`` (with its admin token, if it has one)."""
    status, _, body = worker.request("GET", "/stats", worker.admin)
    assert status == 200, body
    return json.loads(body)
