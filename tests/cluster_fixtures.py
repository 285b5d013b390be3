"""A real three-node Kafka cluster for tests, and a load that can change its workers.

``KafkaCluster`` runs deploy/kafka/cluster.sh (three combined broker+controller
KRaft nodes on free ports of 127.0.0.1, one state directory each) and knows
each node as a ``tests.cluster.Broker`` so a test can ``kill9()`` or
``start()`` one of them. Its ``.url`` is the broker list a ``WorkerPool``
passes to the workers (``kafka://127.0.0.1:P1;127.0.0.1:P2;127.0.0.1:P3``).

Fixtures (import them into a test module):

* ``kafka_cluster`` (module): the cluster; every node is stopped at teardown,
  also on failure (try/finally) and on an interrupted run (atexit).
* ``pool`` (function): a ``WorkerPool`` on that cluster whose topics have
  replication factor 3 (so min.insync.replicas 2). Named ``pool`` so that
  conftest.py attaches the worker log tails to a failed test's report.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from tests.cluster import ROOT, Broker, WorkerPool, free_port_pair, wait_until
from tests.helpers import Load

CLUSTER_SH = ROOT / "deploy" / "kafka" / "cluster.sh"
NODES = 3
HEAP = os.environ.get("BUCKETSTREAM_TEST_KAFKA_HEAP", "384m")
CLUSTER_ID = "bUcKeTsTrEaMtEsTcLuStR"
#: cluster.sh's default KAFKA_PROPERTIES: a dead node is fenced after 3 s (Kafka's default: 9 s).
CLUSTER_SH_PROPERTIES = "broker.session.timeout.ms=3000 broker.heartbeat.interval.ms=500"
#: A killed active KRaft controller: the others notice after controller.quorum.fetch.timeout.ms
#: (2 s) and elect a new one within controller.quorum.election.timeout.ms (1 s); Kafka's defaults.
CONTROLLER_FAILOVER = 3.0


def broker_session_timeout() -> float:
    """Seconds after which the controller fences a node that stopped heartbeating: what
    cluster.sh configures (KAFKA_PROPERTIES, as these tests pass it on), else Kafka's 9 s."""
    properties = os.environ.get("KAFKA_PROPERTIES", CLUSTER_SH_PROPERTIES)
    for pair in properties.split():
        name, _, value = pair.partition("=")
        if name == "broker.session.timeout.ms":
            return int(value) / 1000
    return 9.0


@dataclass
class ClusterNode(Broker):
    """One node of the cluster. ``start``/``stop`` go through cluster.sh (start-node N),
    so a restarted node gets exactly the cluster's configuration; ``kill9`` is kill -9."""

    cluster: "KafkaCluster | None" = None

    def start(self) -> None:
        self.cluster.script("start-node", str(self.node_id))

    def stop(self) -> None:
        self.cluster.script("stop-node", str(self.node_id), timeout=60)

    @property
    def pid(self) -> int | None:
        try:
            return int((self.state_dir / "pid").read_text())
        except (OSError, ValueError):
            return None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.state_dir / "server.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class KafkaCluster:
    """Three KRaft nodes (broker + controller each) started and stopped by cluster.sh."""

    root: Path
    ports: list[int]
    nodes: list[ClusterNode] = field(default_factory=list)

    @classmethod
    def create(cls, n: int = NODES) -> "KafkaCluster":
        root = Path(tempfile.mkdtemp(prefix="bucketstream-kafka-cluster-"))
        ports = [free_port_pair() for _ in range(n)]  # client and controller listener of each node
        voters = ",".join(f"{i + 1}@127.0.0.1:{p + 1}" for i, p in enumerate(ports))
        nodes = [ClusterNode(port=p, state_dir=root / f"node-{i + 1}", node_id=i + 1, controller_port=p + 1,
                             voters=voters, replication=min(3, n)) for i, p in enumerate(ports)]
        cluster = cls(root, ports, nodes)
        for node in nodes:
            node.cluster = cluster
        return cluster

    # -- what workers and clients need -------------------------------------------
    @property
    def url(self) -> str:
        return "kafka://" + ";".join(n.bootstrap for n in self.nodes)

    @property
    def bootstrap_servers(self) -> list[str]:
        return [n.bootstrap for n in self.nodes]

    # -- lifecycle ------------------------------------------------------------------
    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KAFKA_") or k in ("KAFKA_VERSION", "KAFKA_CACHE", "KAFKA_PROPERTIES")}
        return dict(env, KAFKA_CLUSTER_PORTS=" ".join(map(str, self.ports)),
                    KAFKA_CLUSTER_STATE_DIR=str(self.root), KAFKA_CLUSTER_ID=CLUSTER_ID, KAFKA_HEAP=HEAP)

    def script(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([str(CLUSTER_SH), *args], env=self._env(), timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}")
        return proc.stdout

    def start(self) -> None:
        self.script("start")
        self.wait_brokers(NODES, 60)

    def stop(self) -> None:
        """Gone for good (kill -9: the data is thrown away, so no controlled shutdown)."""
        try:
            self.script("kill", timeout=60)
        except Exception:  # noqa: BLE001 - the per-node fallback below is what matters
            pass
        for node in self.nodes:  # anything cluster.sh did not get
            if node.pid is not None:
                node.kill9()

    # -- looking at it (admin client in a throwaway event loop) ---------------------
    def _admin(self, fn):
        async def run():
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=10000)
            await admin.start()
            try:
                return await fn(admin)
            finally:
                await admin.close()
        return asyncio.run(run())

    def describe_cluster(self) -> dict:
        return self._admin(lambda a: a.describe_cluster())

    def wait_brokers(self, n: int, timeout: float) -> None:
        """Until the cluster metadata lists n brokers (every node registered and unfenced)."""
        wait_until(lambda: len(self.describe_cluster()["brokers"]) == n, timeout, 0.5, f"{n} brokers registered")

    def topics(self, names: list[str]) -> dict[str, dict[int, dict]]:
        """topic -> partition -> {"leader", "replicas", "isr"} from the metadata."""
        out: dict[str, dict[int, dict]] = {}
        for t in self._admin(lambda a: a.describe_topics(names)):
            if t["error_code"] == 0:
                out[t["topic"]] = {p["partition"]: {"leader": p["leader"], "replicas": p["replicas"],
                                                    "isr": p["isr"]} for p in t["partitions"]}
        return out

    def topic_config(self, name: str) -> dict[str, str]:
        async def fetch(admin):
            return await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        config: dict[str, str] = {}
        for response in self._admin(fetch):
            for resource in response.resources:
                for entry in resource[4]:
                    config[entry[0]] = entry[1]
        return config

    def coordinator(self, group_id: str) -> int:
        """The node id of the group coordinator of ``group_id``."""
        return self._admin(lambda a: a.find_coordinator(group_id))

    def node(self, node_id: int) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def log_tails(self, n: int = 20) -> str:
        return "\n".join(f"--- kafka node {node.node_id} ({node.state_dir}) ---\n{node.log_tail(n)}" for node in self.nodes)


class LeaderWatch:
    """When the leader of one partition moves off a node, as the cluster's metadata says.

    Polled from the test process through an admin client that bootstraps from every
    node, so it reads Kafka's own view (the controller's fencing and election as the
    live brokers publish it), never anything a worker under test reports.
    """

    POLL = 0.2

    def __init__(self, cluster: KafkaCluster, topic: str, partition: int, away_from: int, clock):
        self.cluster, self.topic, self.partition, self.away_from = cluster, topic, partition, away_from
        self.clock = clock  # the test's time axis, e.g. a load's elapsed()
        self.moved_at: float | None = None
        self.new_leader: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LeaderWatch":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                leader = self.cluster.topics([self.topic])[self.topic][self.partition]["leader"]
            except (KafkaError, OSError, KeyError, asyncio.TimeoutError):
                leader = None  # no live node answered this round
            if leader is not None and leader >= 0 and leader != self.away_from:
                self.moved_at, self.new_leader = self.clock(), leader
                self._done.set()
                return
            self._done.wait(self.POLL)

    def wait(self, timeout: float) -> float:
        """The clock's reading when the leader had moved; fails the test if it never did."""
        self._thread.join(timeout)
        self._done.set()
        assert self.moved_at is not None, (f"{self.topic}[{self.partition}] still led by node {self.away_from} "
                                           f"after {timeout:.0f} s: the cluster never moved it")
        return self.moved_at


@pytest.fixture(scope="module")
def kafka_cluster(request):
    failed_before = request.session.testsfailed
    for attempt in range(2):  # a port another process grabbed meanwhile: once more, other ports
        cluster = KafkaCluster.create()
        atexit.register(cluster.stop)
        try:
            cluster.start()
            break
        except Exception:
            cluster.stop()
            if attempt == 1:
                raise
            shutil.rmtree(cluster.root, ignore_errors=True)
    try:
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(cluster.root, ignore_errors=True)
        else:
            print(f"\nkafka cluster logs kept in {cluster.root}")


def extra_worker_settings() -> dict[str, str]:
    """BUCKETSTREAM_TEST_CLUSTER_SETTINGS="burst_cap=true flush_interval=0.02": worker
    settings for every worker of these tests (to run the same faults another way)."""
    pairs = os.environ.get("BUCKETSTREAM_TEST_CLUSTER_SETTINGS", "").split()
    return dict(pair.split("=", 1) for pair in pairs)


@pytest.fixture
def pool(kafka_cluster, tmp_path):
    """Workers on the three-node cluster, topics replicated 3 times; all stop at teardown."""
    p = WorkerPool(kafka_cluster, tmp_path, topic_replication=3, **extra_worker_settings())
    try:
        yield p
    finally:
        p.stop_all()


class DynamicLoad(Load):
    """``Load`` whose worker list can change while it runs, that can end early,
    and that records every answer that is neither 200 nor 429 (who, when, what)
    and every answer slower than ``SLOW`` seconds."""

    SLOW = 0.25

    def __init__(self, workers, key: str, rate: float, duration: float):
        super().__init__(list(workers), key, rate, duration)
        self.delay_p99 = 0.0  # the largest replication-delay p99 any targeted worker reported during the run
        self._sampler = threading.Thread(target=self._sample_delay, daemon=True)
        self.failures: list[tuple[float, int, int | None]] = []  # (seconds into the run, port, status)
        self.sent_to: dict[int, int] = {}
        self.max_latency: dict[int, float] = {}  # port -> slowest answer, seconds
        self.slow: list[tuple[float, int, float]] = []  # (sent at, port, seconds) of answers slower than SLOW

    def __enter__(self) -> "DynamicLoad":
        super().__enter__()
        self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._sampler.join()

    def _sample_delay(self) -> None:
        """Once a second, the p99 replication delay of the workers the load goes to:
        /stats keeps only recent samples, so a spike during a fault would be gone
        by the end of the run."""
        while self._thread.is_alive():
            for w in list(self.workers):
                try:
                    p99 = json.loads(w.request("GET", "/stats", timeout=2)[2])["replication_delay"]["p99"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                self.delay_p99 = max(self.delay_p99, p99 or 0.0)
            time.sleep(1.0)

    def set_workers(self, workers) -> None:
        """From the next request on, round-robin over these (one atomic swap)."""
        self.workers = list(workers)

    def elapsed(self) -> float:
        return time.time() - self.result.start if self.result.start else 0.0

    def answered(self) -> int:
        r = self.result
        return r.admitted + r.refused + r.errors

    def _post(self, w):
        t0 = time.monotonic()
        status = super()._post(w)
        took = time.monotonic() - t0
        self.sent_to[w.port] = self.sent_to.get(w.port, 0) + 1
        self.max_latency[w.port] = max(self.max_latency.get(w.port, 0.0), took)
        if took > self.SLOW:
            self.slow.append((round(self.elapsed() - took, 3), w.port, round(took, 3)))
        if status not in (200, 429):
            self.failures.append((round(self.elapsed(), 3), w.port, status))
        return status
