"""bucketstream.heap against the real C library: a fixed mmap threshold gives a large dict's old tables back.

Each case runs in a fresh interpreter (the threshold is the whole process's): an
OrderedDict of 100,000 keys churns a million of them, as the decoded cache does
under new users, and its peak RSS is compared with the RSS once it was full.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cluster import ROOT

CHURN = """
import sys
from collections import OrderedDict
from bucketstream import heap
if sys.argv[1] == "fixed":
    assert heap.set_mmap_threshold(1 << 20), "glibc refused the threshold"
def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
cache, n = OrderedDict(), 0
for n in range(100_000):
    cache[b"user-%012d" % n] = None
for _ in range(200_000):  # through its first rebuilds, as a worker's cache is after its first minutes
    cache.popitem(last=False); n += 1; cache[b"user-%012d" % n] = None
base = peak = rss_kib()
for step in range(1_000_000):
    cache.popitem(last=False); n += 1; cache[b"user-%012d" % n] = None
    if step % 1000 == 0:
        peak = max(peak, rss_kib())
print(peak - base)
"""


def _growth_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and /proc")
def test_with_the_threshold_fixed_a_churning_dicts_old_tables_go_back_to_the_system():
    # without it, glibc keeps each rebuilt table's predecessor in its heap: the control shows the test can see that
    assert _growth_mib("default") >= 4
    assert _growth_mib("fixed") <= 1
