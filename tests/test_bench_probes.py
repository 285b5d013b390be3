"""The bench's readings of ``/proc`` (``bench.tools``) measure what their names claim, on real processes."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench import soak
from bench.tools import Yardstick, pin, run_delay

SPIN = [sys.executable, "-c", "while True: pass"]
INTERVAL = 0.6


def spinners(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen(SPIN) for _ in range(n)]
    for p in procs:
        pin(p.pid, {0})
    return procs


def test_a_process_that_shares_its_core_with_a_busy_one_is_seen_waiting_for_it():
    alone, shared = spinners(1), spinners(2)
    try:
        # the lone spinner gets the other core to itself; the two pinned together take turns on core 0
        pin(alone[0].pid, {1})
        before = [run_delay(p.pid) for p in alone + shared]
        time.sleep(INTERVAL)  # the interval measured, not a wait for an event
        waited = [run_delay(p.pid) - b for p, b in zip(alone + shared, before)]
        # two spinners on one core: each runs about half the time and waits the other half
        assert min(waited[1:]) > INTERVAL / 5, waited
        assert waited[0] < min(waited[1:]), waited
        row = soak.waiting([p.pid for p in shared], before[1:], 0.0, INTERVAL)
        assert row["wait_ms_per_s"] >= 1e3 * max(waited[1:]) / INTERVAL * 0.9, row
    finally:
        for p in alone + shared:
            p.kill()
            p.wait()


def test_a_sleeping_process_waits_for_no_core():
    p = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        p.stdout.readline()  # started: what the interpreter's start-up waited is not measured
        before = run_delay(p.pid)
        time.sleep(INTERVAL)
        assert run_delay(p.pid) - before < INTERVAL / 20
    finally:
        p.kill()
        p.wait()


def test_the_yardstick_reads_the_cpu_its_work_took_not_the_wait_for_a_core():
    """Beside two spinners on its core the yardstick's work runs a third of the time: its wall time
    triples, the CPU it took does not (a reading of wall time would say the machine got slower).
    Readings longer than the scheduler's slices here, so that each one is cut into turns."""
    alone = Yardstick({0}, every=0.02, rounds=20 * Yardstick.ROUNDS)
    alone.start()
    time.sleep(INTERVAL)  # the interval measured, not a wait for an event
    alone.stop()
    shared = Yardstick({0}, every=0.02, rounds=20 * Yardstick.ROUNDS)
    busy = spinners(2)
    try:
        shared.start()
        time.sleep(INTERVAL * 2)
        shared.stop()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    wall = statistics.median(shared.wall_us) / statistics.median(alone.wall_us)
    cpu = statistics.median(shared.cpu_us) / statistics.median(alone.cpu_us)
    assert wall > 1.8, (wall, shared.wall_us, alone.wall_us)  # it did wait for the core
    assert cpu < 1.4, (cpu, shared.cpu_us, alone.cpu_us)
