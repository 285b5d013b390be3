"""``bench.profile`` counts what a process works on, not its threads that wait: on stacks as py-spy writes them,
and with a real py-spy on a real process."""

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


#: Collapsed stacks (``py-spy record --format raw``) of a worker at max load, 2026-12-05: the event loop in
#: epoll, the heap trim's pool thread in its queue's ``get``, and two stacks of work.
WORKER_STACKS = """\
<module> (bucketstream:6);BaseEventLoop.run_forever (asyncio/base_events.py:607);BaseEventLoop._run_once (asyncio/base_events.py:1884);EpollSelector.select (selectors.py:468) 297
Thread._bootstrap (threading.py:1002);Thread._bootstrap_inner (threading.py:1045);Thread.run (threading.py:982);_worker (/root/.pyenv/versions/3.11.7/lib/python3.11/concurrent/futures/thread.py:81) 285
<module> (bucketstream:6);BaseEventLoop._run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80);_SelectorSocketTransport.write (asyncio/selector_events.py:1057) 214
Thread._bootstrap (threading.py:1002);Thread._bootstrap_inner (threading.py:1045);Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83);_WorkItem.run (concurrent/futures/thread.py:58);trim (bucketstream/heap.py:40) 6
"""


def test_a_thread_pool_waiting_for_work_is_set_aside_and_its_tasks_are_counted(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(WORKER_STACKS)
    summary = profile.summarize(raw)
    assert summary["waiting"] == 297 + 285
    assert summary["samples"] == 214 + 6  # a task the pool runs is work
    assert dict(summary["self"]) == {"_SelectorSocketTransport.write (asyncio/selector_events.py)": 214 / 220,
                                     "trim (bucketstream/heap.py)": 6 / 220}


@pytest.mark.skipif(not profile.available(), reason="py-spy not installed (pip install -e '.[bench]')")
def test_a_real_thread_pool_waiting_for_work_is_not_counted_as_busy(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # the pool's thread exists and waits
        raw = tmp_path / "raw.txt"
        profile.wait(profile.record(proc.pid, 2, raw), 30)
        summary = profile.summarize(raw)
    finally:
        proc.kill()
        proc.wait()
    if "_worker (" not in raw.read_text():
        pytest.skip("py-spy saw the pool's thread as idle itself here: nothing to set aside")
    # py-spy read the waiting thread as running, and the summary set it aside
    assert summary["waiting"] > 0.1 * summary["samples"] > 0, summary
    # so the busy samples are the spinning thread's
    (top, share), *_ = summary["self"]
    assert top.startswith("spin (") and share > 0.95, summary["self"]
