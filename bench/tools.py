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
import subprocess
import sys
import time
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
