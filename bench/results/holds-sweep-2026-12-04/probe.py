"""The refill sweep's cost per removed key over time: Holds on a dict (before) and on an
OrderedDict (after), side by side in one process, with no worker around it.

New users at 10,000/s (one hold each), rule C = 100, R = 10/s, 3 workers (an allowance
refills in 6 s), the sweep run once per simulated second in slices of 250 as the
worker's timer does (agents.resend_unconfirmed). CPU time of the sweep per removed key,
and the longest slice (the longest the event loop is held), per 10 simulated seconds.

    .venv/bin/python bench/results/holds-sweep-2026-12-04/probe.py
"""

import time
from collections import OrderedDict

from bucketstream.agents import SWEEP_SLICE
from bucketstream.crdt import Rule
from bucketstream.hold import HoldRule, Holds

RATE, SECONDS, RULE = 10_000, 60, Rule(100, 10)


def run(kind):
    holds = Holds(HoldRule())
    holds._entries = kind()
    rows, user = [], 0
    swept = removed = 0.0
    worst = 0.0
    for sec in range(SECONDS):
        for j in range(RATE):
            holds.try_hold(b"user-%d" % user, RULE, sec + j / RATE, 1, 99.0, 3)
            user += 1
        now = sec + 1.0
        start = time.process_time()
        while True:
            t0 = time.perf_counter()
            removed += len(holds.refilled(now, SWEEP_SLICE))
            more = holds.any_refilled(now)
            worst = max(worst, time.perf_counter() - t0)
            if not more:
                break
        swept += time.process_time() - start
        if sec % 10 == 9:
            rows.append((sec + 1, 1e6 * swept / max(removed, 1), 1e6 * worst))
            swept = removed = worst = 0.0
    return rows


results = {kind.__name__: run(kind) for kind in (dict, OrderedDict)}
print("| simulated s | dict: µs per removed key | dict: longest slice µs | OrderedDict: µs per removed key | OrderedDict: longest slice µs |")
print("|---:|---:|---:|---:|---:|")
for a, b in zip(results["dict"], results["OrderedDict"]):
    print(f"| {a[0]} | {a[1]:.2f} | {a[2]:.0f} | {b[1]:.2f} | {b[2]:.0f} |")
