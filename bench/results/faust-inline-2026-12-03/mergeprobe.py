"""What one worker spends per update record it merges: updates written straight to its update topic.

``PYTHONPATH=. python bench/results/faust-inline-2026-12-03/mergeprobe.py N DISTINCT [prof]``
from the repository root (for the code before, the same from a git worktree of
1228a8c with PYTHONPATH pointing at it): one broker, one worker (C = 100, R = 10/s,
no expiry sweep), N update records over DISTINCT keys written at once; prints how
long until its merge agent handled them all and the worker's CPU per record over
that time (merge agent, peer feed, changelog writes). ``prof``: a py-spy summary.
"""
import asyncio, random, sys, tempfile, time
from pathlib import Path
from aiokafka import AIOKafkaProducer
from bench.run import Bench, Config
from bench import soak, profile
from bench.kafka import realistic_state
from bucketstream import crdt
from bucketstream.rules import Rules
from bucketstream.settings import Settings
from bucketstream.topics import updates_topic
N = int(sys.argv[1]); DISTINCT = int(sys.argv[2]); PROF = len(sys.argv) > 3
cfg = Config(out=Path(tempfile.mkdtemp()))
b = Bench(cfg)
b.start_broker()
try:
    p = b.pool("mp", capacity=100.0, rate=10.0, expire_check_interval=3600)
    (w,) = p.start(1)
    rule = Rules.from_settings(100.0, 10.0, None).default.rule
    rng = random.Random(1)
    now = time.time()
    keys = [Rules.key(Rules.from_settings(100.0, 10.0, None).default, f"u{i}", None) for i in range(DISTINCT)]
    recs = []
    counts = {}
    for i in range(N):
        k = keys[i % DISTINCT]
        st = crdt.BucketState({rng.getrandbits(62): counts.setdefault(k, 0) + 1})
        counts[k] += 1
        recs.append((k, crdt.encode(crdt.join(st, crdt.BucketState({7: counts[k]})))))
    async def run():
        s = Settings(broker=b.broker.url, app_id=p.app_id, partitions=cfg.partitions)
        producer = AIOKafkaProducer(bootstrap_servers=b.broker.bootstrap, acks=1, linger_ms=50, max_batch_size=1<<20)
        await producer.start()
        futs = [await producer.send(updates_topic(s), key=k, value=v) for k, v in recs]
        await asyncio.gather(*futs)
        await producer.stop()
    base = soak.handled(w)
    prof = profile.record(w.proc.pid, 30, Path(cfg.out) / "merge.raw") if PROF else None
    from bench.tools import cpu_seconds
    cpu0 = cpu_seconds(w.proc.pid)
    t0 = time.monotonic()
    asyncio.run(run())
    t1 = time.monotonic()
    print(f"written {N} in {t1 - t0:.2f}s", flush=True)
    c0 = soak.cpu_seconds(w.proc.pid) if hasattr(soak, "cpu_seconds") else None
    while True:
        h = soak.handled(w) - base
        if h >= N: break
        time.sleep(0.1)
    t2 = time.monotonic()
    cpu = cpu_seconds(w.proc.pid) - cpu0
    print(f"handled {N} in {t2 - t0:.2f}s from the first write: {N / (t2 - t0):.0f}/s, worker CPU {1e6 * cpu / N:.1f} us/record", flush=True)
    if prof:
        profile.wait(prof, 60)
        s = profile.summarize(Path(cfg.out) / "merge.raw", top=25)
        print(profile.render("merge", s))
finally:
    for p in list(b.pools): b.stop_pool(p)
    b.broker.stop()
