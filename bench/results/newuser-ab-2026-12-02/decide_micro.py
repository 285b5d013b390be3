"""One limiter decision in-process, a new user against the same user, with each partitioner, side by side.

Run from the repository root: ``python bench/results/newuser-ab-2026-12-02/decide_micro.py``.
The limiter reads 8 real (empty) RocksDB stores through the key's partition, as
``tables.read_stored`` does; ``before`` hashes with aiokafka's murmur2 behind an
LRU cache of 65,536 keys (the worker before keyhash), ``after`` with keyhash.
"""

import functools
import os
import random
import tempfile
import time

import faust.stores.rocksdb as faust_rocksdb
from aiokafka.partitioner import murmur2

from bucketstream import keyhash, patches
from bucketstream.crdt import Rule
from bucketstream.hold import HoldRule, Holds
from bucketstream.local import Limiter
from bucketstream.tables import STORE_OPTIONS

patches.share_write_buffers()
root = tempfile.mkdtemp()
dbs = {p: faust_rocksdb.RocksDBOptions(**STORE_OPTIONS).open(os.path.join(root, f"{p}.db")) for p in range(8)}
PARTITIONERS = {
    "before": functools.lru_cache(maxsize=1 << 16)(lambda k: (murmur2(k) & 0x7FFFFFFF) % 8),
    "after": lambda k: keyhash.partition(k, 8),
}
RULE = Rule(1e6, 1e6)  # the bench's rule: nobody near the limit, every admission held back
N = 200_000


def per_decision(partition_for, keys) -> float:
    limiter = Limiter(3, lambda key: dbs[partition_for(key)].get(key), holds=Holds(HoldRule()))
    now = time.monotonic()
    started = time.perf_counter()
    for i, key in enumerate(keys):
        limiter.decide(key, RULE, now + i * 1e-5)
    return (time.perf_counter() - started) / len(keys) * 1e6


for round_ in range(4):
    for name, partition_for in (PARTITIONERS.items() if round_ % 2 == 0 else reversed(PARTITIONERS.items())):
        unique = [b"default:new-%d-%d-%d" % (round_, random.getrandbits(30), i) for i in range(N)]
        print(f"round {round_} {name:6s}  new user {per_decision(partition_for, unique):5.2f} µs   "
              f"same user {per_decision(partition_for, [b'default:hot'] * N):5.2f} µs")
