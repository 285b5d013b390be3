"""A census of the event loop's long stretches in a worker (a probe, not part of bucketstream).

On PYTHONPATH with STALL_LOG=PATH set, every bucketstream worker process (it has
BUCKETSTREAM_APP_ID) times each callback of its event loop; callbacks of 4 ms and
more are counted by what ran (a task's coroutine chain, or the callback), in
buckets 4-10, 10-20 and > 20 ms, with "GC+" when a garbage-collector pass took
more than half of it. Written to PATH.<pid> every 20 s and at exit.
"""
import os
if os.environ.get("STALL_LOG") and os.environ.get("BUCKETSTREAM_APP_ID"):
    import asyncio.events, atexit, gc, time, collections, threading
    perf = time.perf_counter
    gc_time = [0.0, 0.0]
    def _gccb(phase, info):
        if phase == "start":
            gc_time[1] = perf()
        else:
            gc_time[0] += perf() - gc_time[1]
    gc.callbacks.append(_gccb)
    slow = collections.Counter()
    slow_time = collections.Counter()
    stats = {"n": 0, "t": 0.0}
    orig = asyncio.events.Handle._run
    def describe(cb):
        for r in gc.get_referents(cb):
            if isinstance(r, asyncio.Task):
                c = r.get_coro(); names = []
                while c is not None and len(names) < 6:
                    names.append(getattr(c, "__qualname__", type(c).__name__))
                    c = getattr(c, "cr_await", None) or getattr(c, "gi_yieldfrom", None) or getattr(c, "ag_await", None)
                return "task " + " > ".join(names)
        return repr(cb)[:150]
    def _run(self):
        t0 = perf(); g0 = gc_time[0]
        orig(self)
        dt = perf() - t0
        if dt > 0.004 and threading.current_thread() is threading.main_thread():
            g = gc_time[0] - g0
            key = ("GC+" if g > dt / 2 else "") + describe(self._callback)
            b = "4-10ms" if dt < 0.01 else "10-20ms" if dt < 0.02 else ">20ms"
            slow[(key, b)] += 1
            slow_time[key] += dt
    asyncio.events.Handle._run = _run
    def dump():
        with open(os.environ["STALL_LOG"] + f".{os.getpid()}", "w") as f:
            for (k, b), n in sorted(slow.items(), key=lambda kv: -slow_time[kv[0][0]]):
                f.write(f"{n:6d} {b:8s} {slow_time[k]*1e3:9.1f}ms  {k}\n")
    def loop_dump():
        while True:
            time.sleep(20); dump()
    threading.Thread(target=loop_dump, daemon=True).start()
    atexit.register(dump)
