"""Real processes for tests: a Kafka broker (deploy/kafka/kafka.sh) and bucketstream workers.

Every process started here is registered and stopped at teardown, even when
the test fails (see conftest.py); each runs in its own process group so a
``kill -9`` test hits exactly one worker.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
KAFKA_SECURE_SH = ROOT / "deploy" / "kafka" / "kafka-secure.sh"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


_handed_out: set[int] = set()


def free_port(pair: bool = False) -> int:
    """A free port of 127.0.0.1 below the kernel's ephemeral range (with p+1 free too if ``pair``).

    Not port 0's answer: that comes from the ephemeral range, and between this
    call and the process that listens on it, any outgoing connection on the
    machine (a worker's to the broker, the broker's own) can take it as its
    source port; the listener then dies with "Address already in use". A port
    below the range is only ever taken by a bind. Ports handed out once are not
    handed out again in this process, so two calls in a row never collide.
    """
    top = max(_ephemeral_low() - 2, 12000)
    for _ in range(1000):
        p = random.randrange(10000, top)
        taken = {p, p + 1} if pair else {p}
        if taken & _handed_out or not all(_bindable(q) for q in taken):
            continue
        _handed_out.update(taken)
        return p
    raise RuntimeError("no free port below the ephemeral range")


def free_port_pair() -> int:
    """A port p with p+1 free as well (client and controller listeners)."""
    return free_port(pair=True)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s (last: {last!r})")


@dataclass
class Broker:
    port: int
    state_dir: Path
    node_id: int = 1
    controller_port: int | None = None
    voters: str | None = None
    replication: int = 1

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict:
        env = dict(os.environ, KAFKA_PORT=str(self.port), KAFKA_STATE_DIR=str(self.state_dir),
                   KAFKA_NODE_ID=str(self.node_id), KAFKA_REPLICATION=str(self.replication))
        if self.controller_port:
            env["KAFKA_CONTROLLER_PORT"] = str(self.controller_port)
        if self.voters:
            env["KAFKA_VOTERS"] = self.voters
        return env

    def start(self) -> None:
        subprocess.run([str(KAFKA_SH), "start"], env=self._env(), check=True, timeout=180,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        subprocess.run([str(KAFKA_SH), "stop"], env=self._env(), check=False, timeout=60,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        pid_file = self.state_dir / "pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
            pid_file.unlink()


@dataclass
class SecureBroker:
    """deploy/kafka/kafka-secure.sh: a broker whose client listener is SASL_SSL (SCRAM, a local CA)."""

    port: int  # the SASL_SSL listener; the internal PLAINTEXT and controller listeners use two more free ports
    state_dir: Path
    env: dict = field(default_factory=dict)  # the BUCKETSTREAM_* lines the script printed

    def _env(self) -> dict:
        return dict(os.environ, KAFKA_SECURE_PORT=str(self.port), KAFKA_STATE_DIR=str(self.state_dir),
                    KAFKA_PORT=str(free_port()), KAFKA_CONTROLLER_PORT=str(free_port()))

    def start(self) -> None:
        out = subprocess.run([str(KAFKA_SECURE_SH), "start"], env=self._env(), check=True, timeout=180,
                             capture_output=True, text=True).stdout
        # the script's stdout is KEY=value lines (shell-quoted; ours need no quoting)
        self.env = dict(line.split("=", 1) for line in out.strip().splitlines())

    def stop(self) -> None:
        subprocess.run([str(KAFKA_SECURE_SH), "stop"], env=self._env(), check=False, timeout=60,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return self.env["BUCKETSTREAM_BROKER"]

    @property
    def settings(self) -> dict:
        """The security settings, as WorkerPool(**settings) takes them."""
        return {k.removeprefix("BUCKETSTREAM_").lower(): v for k, v in self.env.items() if k != "BUCKETSTREAM_BROKER"}

    @property
    def other_ca(self) -> Path:
        """A CA that did not sign the broker's certificate."""
        return self.state_dir / "tls" / "other-ca.pem"


@dataclass
class Worker:
    """One ``bucketstream worker`` process."""

    port: int
    env: dict
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    extra_args: list = field(default_factory=list)

    def start(self) -> "Worker":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bucketstream.cli", "worker", "--web-port", str(self.port),
             "--data-dir", str(self.data_dir), *self.extra_args],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 90.0) -> "Worker":
        def ready():
            if not self.alive:
                raise RuntimeError(f"worker {self.port} exited: {self.log_tail()}")
            try:
                status, _, _ = self.request("GET", "/readyz", timeout=1)
                return status == 200
            except OSError:
                return False
        wait_until(ready, timeout, 0.1, f"worker {self.port} ready")
        return self

    def request(self, method: str, path: str, headers: dict | None = None, timeout: float = 5.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, dict(resp.getheaders()), body
        finally:
            conn.close()

    @property
    def admin(self) -> dict:
        """The headers of an admin request (/buckets, /stats, /metrics): the bearer token, if the worker has one."""
        token = self.env.get("BUCKETSTREAM_ADMIN_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def protected(self, user: str, path: str = "/protected"):
        status, headers, body = self.request("POST", path, {"X-User-ID": user})
        return status, headers, json.loads(body) if body else None

    def bucket(self, key: str) -> dict:
        """GET /buckets/{key} with the CRDT's internals (``debug=1``)."""
        status, _, body = self.request("GET", f"/buckets/{key}{'&' if '?' in key else '?'}debug=1", self.admin)
        assert status == 200, body
        return json.loads(body)

    def signal(self, sig: int) -> None:
        if self.alive:
            os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._log.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class WorkerPool:
    """Starts workers of one app against one broker; stops them all at teardown."""

    def __init__(self, broker: Broker, tmp: Path, **settings):
        self.broker = broker
        self.tmp = tmp
        self.app_id = settings.pop("app_id", f"bs-{uuid.uuid4().hex[:8]}")
        self.settings = settings
        self.workers: list[Worker] = []

    def env(self, **overrides) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETSTREAM_")}
        conf = {"broker": self.broker.url, "app_id": self.app_id, "log_level": "warning", **self.settings, **overrides}
        for name, value in conf.items():
            env["BUCKETSTREAM_" + name.upper()] = str(value)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, n: int = 1, ready: bool = True, **overrides) -> list[Worker]:
        new = []
        for _ in range(n):
            port = free_port()
            w = Worker(port, self.env(**overrides), self.tmp / f"data-{port}", self.tmp / f"worker-{port}.log")
            self.workers.append(w.start())
            new.append(w)
        if ready:
            for w in new:
                w.wait_ready()
            self.wait_stable()
        return new

    def wait_stable(self, timeout: float = 60.0) -> None:
        """Until the live workers' assignment is settled: each partition active on exactly
        one worker, and every worker holding every partition (active or standby)."""
        partitions = int(self.settings.get("partitions", 8))

        def stable():
            live = [w for w in self.workers if w.alive]
            stats = [json.loads(w.request("GET", "/stats", w.admin, timeout=2)[2]) for w in live]
            if any(s["rebalancing"] or not s["ready"] for s in stats):
                return False
            actives = sorted(p for s in stats for p in s["partitions"]["active"])
            if actives != list(range(partitions)):
                return False
            return all(len(s["partitions"]["active"]) + len(s["partitions"]["standby"]) == partitions
                       for s in stats) or len(live) == 1
        wait_until(stable, timeout, 0.2, "a settled assignment")

    def restart(self, w: Worker) -> Worker:
        """Same port and data directory, new process (and so a fresh CRDT slot)."""
        w.stop()
        w.start()
        return w

    def stop_all(self) -> None:
        for w in self.workers:
            try:
                w.stop()
            except Exception:  # keep stopping the others
                w.kill9()
