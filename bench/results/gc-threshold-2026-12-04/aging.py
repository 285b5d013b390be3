"""In-process: does a new user's decision cost more the longer the limiter runs? (heap aging probe)"""
import gc, os, sys, time
from bucketstream.crdt import Rule
from bucketstream.hold import HoldRule, Holds
from bucketstream.local import Limiter
gc.freeze()
rule = Rule(100, 10)
lim = Limiter(1, lambda k: None, cache_size=int(os.environ.get("CACHE", 50000)), holds=None if "nohold" in sys.argv else Holds(HoldRule()))
rate = 5000.0  # virtual new users per second of the virtual clock
n = 0; t0 = 1.8e9
CH = 250_000
for chunk in range(int(sys.argv[1]) if len(sys.argv) > 1 else 24):
    c0 = time.process_time()
    for i in range(CH):
        now = t0 + n / rate
        key = b"r:new%09d" % n
        lim.decide(key, rule, now)
        n += 1
        if n % 5000 == 0:
            lim.drop_refilled(now)
            lim.take_dirty(now)
    c1 = time.process_time()
    print(f"{n:>9,} users: {1e6 * (c1 - c0) / CH:5.2f} µs/decision  own {lim.own_keys} cached {lim.cached_keys} holds {len(lim.holds or ())} blocks {sys.getallocatedblocks():,}", flush=True)
