"""Experiment only: the worker with one part of a new user's path changed (AB_MODE)."""
import os, sys
from bucketstream import local
mode = os.environ.get("AB_MODE", "")
orig = local.Limiter.__init__
def init(self, slot, read_table, *a, **k):
    if "noread" in mode:
        read_table = lambda key: None
    if "readtwice" in mode:
        real2 = read_table
        def read_table(key):
            real2(key)
            return real2(key)
    if "timeread" in mode:
        import time, atexit
        real, pc = read_table, time.thread_time_ns
        stats = [0, 0]
        def read_table(key):
            t = pc(); v = real(key); stats[0] += pc() - t; stats[1] += 1
            return v
        atexit.register(lambda: print(f"AB reads {stats[1]} thread-cpu {stats[0] / max(1, stats[1]) / 1000:.2f} us each", flush=True))
    orig(self, slot, read_table, *a, **k)
local.Limiter.__init__ = init
if "nogc" in mode:
    import gc
    from bucketstream import worker as w
    orig_freeze = gc.freeze
    def freeze():
        orig_freeze(); gc.disable()
    w.gc.freeze = freeze
if "timeget" in mode:
    import time, atexit
    from bucketstream import patches
    pc = time.perf_counter_ns
    st = {"n": 0, "first": 0, "second": 0}
    class Timed:
        __slots__ = ("db",)
        def __init__(self, db): self.db = db
        def get(self, key):
            db = self.db
            t0 = pc(); v = db.get(key); t1 = pc(); db.get(key); t2 = pc()
            st["n"] += 1; st["first"] += t1 - t0; st["second"] += t2 - t1
            return v
    class Dbs:
        def __init__(self, d): self.d = d
        def get(self, p):
            db = self.d.get(p)
            return None if db is None else Timed(db)
    orig_dbs = patches.store_dbs
    patches.store_dbs = lambda table: Dbs(orig_dbs(table))
    atexit.register(lambda: print(f"AB gets {st['n']} first {st['first'] / max(1, st['n']) / 1000:.2f} us second {st['second'] / max(1, st['n']) / 1000:.2f} us", flush=True))
if "nocachemiss" in mode:
    BOTTOM = local.BOTTOM
    def replica(self, key):
        cache = self._replica
        state = cache.get(key)
        if state is None:
            raw = self._read_table(key)
            if raw is None:
                if key not in self._own:
                    return BOTTOM  # a first read that finds nothing: not cached
                state = BOTTOM
            else:
                state = self._decode(key, raw)
            if len(cache) >= self._cache_size:
                cache.popitem(last=False)
            cache[key] = state
        else:
            cache.move_to_end(key)
        return state
    local.Limiter.replica = replica
from bucketstream.cli import main
sys.argv[0] = "bucketstream"
sys.exit(main())
