"""Experiments inside a live worker (on PYTHONPATH before the repository; probe.py's worker inherits it).

- ``EXP_TIMING=FILE``: time the parts of a decision (``Limiter.decide``, ``Limiter.replica``, the table read,
  ``Worker.partition_for``) and append one line of averages to FILE every 50,000 decisions. The timers cost
  the worker about a microsecond per decision themselves.
- ``EXP_FORGET=FILE``: while FILE exists (checked every 1,000 decisions), a user not seen before leaves
  nothing behind: its own state, allowance entry and cache slot are dropped right after the decision.
  Wrong semantics, for the worker phase's rule (C = R = 1,000,000) only: do new users' long-lived objects
  slow the rest of the request path down?
"""
import os
import time

TIMING, FORGET = os.environ.get("EXP_TIMING"), os.environ.get("EXP_FORGET")
if TIMING or FORGET:
    from bucketstream import local
    from bucketstream import worker as worker_module

    pc = time.perf_counter
    acc = {"n": 0, "decide": 0.0, "replica": 0.0, "read": 0.0, "reads": 0, "hash": 0.0, "hashes": 0}
    forget = {"on": False}
    _decide, _replica, _init = local.Limiter.decide, local.Limiter.replica, local.Limiter.__init__
    _partition_for = worker_module.Worker.partition_for

    def __init__(self, slot, read_table, **kw):
        def timed_read(key):
            t = pc()
            value = read_table(key)
            acc["read"] += pc() - t
            acc["reads"] += 1
            return value
        _init(self, slot, timed_read if TIMING else read_table, **kw)

    def replica(self, key):
        t = pc()
        state = _replica(self, key)
        acc["replica"] += pc() - t
        return state

    def partition_for(self, key):
        t = pc()
        p = _partition_for(self, key)
        acc["hash"] += pc() - t
        acc["hashes"] += 1
        return p

    def decide(self, key, rule, now, cost=1, capped=False):
        acc["n"] += 1
        if FORGET and acc["n"] % 1000 == 0:
            forget["on"] = os.path.exists(FORGET)
        new = forget["on"] and key not in self._own and key not in self._replica
        t = pc()
        decision = _decide(self, key, rule, now, cost, capped)
        acc["decide"] += pc() - t
        if new:
            self._own.pop(key, None)
            self._replica.pop(key, None)
            self._dirty.pop(key, None)
            if self.holds is not None:
                self.holds._entries.pop(key, None)
        if TIMING and acc["n"] % 50000 == 0:
            n = 50000
            with open(TIMING, "a") as f:
                f.write(f"decide {acc['decide'] / n * 1e6:.2f} us, replica {acc['replica'] / n * 1e6:.2f} us, "
                        f"table read {acc['read'] / max(1, acc['reads']) * 1e6:.2f} us x {acc['reads'] / n:.2f}, "
                        f"partition_for {acc['hash'] / max(1, acc['hashes']) * 1e6:.2f} us x {acc['hashes'] / n:.2f}\n")
            acc.update(decide=0.0, replica=0.0, read=0.0, reads=0, hash=0.0, hashes=0)
        return decision

    local.Limiter.decide = decide
    if TIMING:
        local.Limiter.__init__ = __init__
        local.Limiter.replica = replica
        worker_module.Worker.partition_for = partition_for
