"""``bench.profile`` counts what a process works on, not its threads that wait: a real py-spy on a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import profile

#: The main thread spins in ``spin``; a ThreadPoolExecutor's thread, after one task, waits for the next.
#: On one core, as the bench pins a worker: there py-spy reads the waiting thread as running in about
#: a quarter of its samples (a worker's heap-trim thread was a quarter of its "busy" samples).
PROGRAM = """
import concurrent.futures, os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(lambda: None).result()
print(flush=True)
def spin():
    while True:
        pass
spin()
"""


@pytest.mark.skipif(not profile.available(), reason="py-spy not installed (pip install -e '.[bench]')")
def test_a_thread_pool_waiting_for_work_is_not_counted_as_busy(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # the pool's thread exists and waits
        raw = tmp_path / "raw.txt"
        profile.wait(profile.record(proc.pid, 2, raw), 30)
        summary = profile.summarize(raw)
    finally:
        proc.kill()
        proc.wait()
    # py-spy read the waiting thread as running, and the summary set it aside
    assert "_worker (" in raw.read_text()
    assert summary["waiting"] > 0.1 * summary["samples"] > 0, summary
    # so the busy samples are the spinning thread's
    (top, share), *_ = summary["self"]
    assert top.startswith("spin (") and share > 0.95, summary["self"]
