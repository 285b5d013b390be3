"""Machine plumbing for the bench: external tools, processes, CPU pinning, memory and disk.

Every process the bench starts goes through :class:`Procs`: its own process
group, stopped (SIGTERM, then SIGKILL) by :meth:`Procs.stop_all`, which the
orchestrator calls in a ``finally`` block, so an error or Ctrl-C leaves
nothing running.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

#: Debian packages of the compiled tools the bench drives: the load generator
#: and the centralized design's store.
TOOLS = {"wrk": "wrk", "redis-server": "redis-server"}


class BenchError(RuntimeError):
    """A failure the bench reports in one line (no traceback)."""


def ensure_tools(log=print) -> dict[str, str]:
    """Install wrk and redis-server from Debian when missing; return their versions."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise BenchError(f"missing {' '.join(missing)}: install them (Debian: sudo apt-get install -y "
                             f"{' '.join(missing)}) or run the bench as root")
        log(f"installing {' '.join(missing)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if done.returncode != 0:
                raise BenchError(f"apt-get install {' '.join(missing)} failed: {done.stdout.strip().splitlines()[-1:]}")
    return {"wrk": _first_line(["wrk", "-v"]), "redis-server": _first_line(["redis-server", "--version"])}


def _first_line(cmd: list[str]) -> str:
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    return out.strip().splitlines()[0] if out.strip() else "?"


def cpu_sets(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load-generator CPUs): the server under test gets one core to
    itself, wrk (and the broker, and Redis) the other; None = no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of ``pid`` (and of its children) to ``cpus``; threads
    created later inherit the mask from their creator."""
    if not cpus:
        return
    for p in [pid, *children(pid)]:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        return out
    return out + [g for c in out for g in children(c)]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def run_delay(pid: int) -> float:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a core (the scheduler's
    ``run_delay``). A worker's main thread runs its event loop: while it waits, every request waits."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def steal_seconds() -> float:
    """CPU time the hypervisor has given to other guests while this machine's cores had work, summed
    over the cores (``/proc/stat``, steal)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / _TICK


class Yardstick:
    """How fast this machine runs Python right now, read while a soak window's load runs.

    A fixed piece of pure-Python work of the kind a worker does per request (a new
    bytes key looked up and inserted in a full, bounded OrderedDict, the oldest key
    evicted, a small tuple and an f-string encoded) is timed in a thread of its own
    every ``every`` s, as that thread's CPU time: waiting for a core, or for the GIL,
    does not count. So when the same work costs more CPU in one window than in
    another, the host ran Python slower then (its clock, or caches and memory shared
    with other guests), which no reading of this guest's own load shows; a worker's
    CPU per request that rises with it is the machine's, not a cost of the worker's
    that grows. The OrderedDict is full from the start, so the first window is not
    the cheapest for filling it. About 1 % of a core.

    It shares the cores' caches with the workers, so it compares windows of the same
    traffic (the soak's), not runs of different traffic: a worker whose working set is
    larger, new users against one hot user, slows the yardstick's work as well as its own.
    """

    KEYS = 50_000  # the soak's decoded cache per worker holds as many
    ROUNDS = 2_000  # per reading: about 2-4 ms of CPU

    def __init__(self, cpus: set[int] | None = None, every: float = 0.25, rounds: int = ROUNDS) -> None:
        self.cpus = cpus
        self.every = every
        self.rounds = rounds
        self._cache: OrderedDict[bytes, tuple] = OrderedDict((b"yardstick:%d" % i, (1.0, 0.0, i))
                                                             for i in range(self.KEYS))
        self._next = self.KEYS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_us: list[float] = []  # CPU µs per reading, this window
        self.wall_us: list[float] = []  # wall µs of the same readings (waits included): for the tests

    def work(self) -> None:
        """One reading's worth of the work."""
        cache, n = self._cache, self._next
        for i in range(n, n + self.rounds):
            key = b"yardstick:%d" % i  # never seen before: a miss, an eviction and an insert
            if cache.get(key) is None:
                cache.popitem(last=False)
                cache[key] = (1.0, float(i), i)
            f'{{"allowed": true, "remaining": {i % 100}, "reset": {i % 7}}}'.encode()
        self._next = n + self.rounds

    def start(self) -> None:
        """Start reading (a window begins)."""
        self.cpu_us, self.wall_us = [], []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="yardstick", daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Stop reading (the window ended); the median CPU µs of one reading, None if none was taken."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return statistics.median(self.cpu_us) if self.cpu_us else None

    def _run(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)  # 0: this thread only (Linux)
        while True:
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            self.work()
            self.cpu_us.append((time.thread_time_ns() - cpu) / 1e3)
            self.wall_us.append((time.perf_counter_ns() - wall) / 1e3)
            if self._stop.wait(self.every):
                return


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def uptime() -> str:
    return _first_line(["uptime"])


class Procs:
    """Processes started by the bench, each in its own process group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, object]] = []
        self.started: list[int] = []

    def start(self, name: str, cmd: list[str], log_path: Path | None = None, env: dict | None = None,
              cpus: set[int] | None = None) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=preexec)
        self.procs.append((name, proc, out))
        self.started.append(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        for i, (name, p, out) in enumerate(self.procs):
            if p is proc:
                _stop(p, timeout)
                if out is not subprocess.DEVNULL:
                    out.close()
                del self.procs[i]
                return

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs[-1][1])


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        except ProcessLookupError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def wait_http(port: int, path: str = "/", timeout: float = 30.0, proc: subprocess.Popen | None = None,
              method: str = "GET", ok=(200,)) -> float:
    """Poll until ``path`` answers with a status in ``ok``; return the seconds it took."""
    import http.client

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process on port {port} exited with {proc.returncode} before answering {path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request(method, path, headers={"X-User-ID": "bench-probe"})
            status = conn.getresponse().status
            conn.close()
            if status in ok:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"port {port} did not answer {path} within {timeout:.0f}s")


def python() -> str:
    return sys.executable
