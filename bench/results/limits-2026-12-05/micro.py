"""One and two limits through the pure request path (protect, no HTTP), a hot user."""
import sys, time, timeit, tempfile, os
sys.path.insert(0, "/work/main/tests"); sys.path.insert(0, "/work/main")
from multidict import CIMultiDict
from bucketstream.settings import Settings
from bucketstream.web import protector
from bucketstream.worker import Worker

C = 1_000_000.0
files = {1: f"[default]\ncapacity = {C}\nrate = {C}\n",
         2: (f"[default]\nlimits = [{{ name = \"second\", capacity = {C}, rate = {C} }},"
             f" {{ name = \"day\", capacity = {C * 10}, rate = {C} }}]\n")}
class Req:
    def __init__(self, user): self.headers = CIMultiDict([("X-User-ID", user)])
protects = {}
for n, text in files.items():
    path = os.path.join(tempfile.mkdtemp(), "limits.toml"); open(path, "w").write(text)
    w = Worker(Settings(limits=path), slot=7)
    w.limiter._read_table = lambda k: None
    w.tables_recovered = lambda: True
    w.mark_peer_feed_ready()
    protects[n] = (protector(w), w)
req = Req("hot-user")
for rnd in range(3):
    for n, (p, w) in protects.items():
        t = min(timeit.repeat(lambda: p(req, None), number=20000, repeat=5)) / 20000
        print(f"{n} limit(s): {t*1e6:.2f} µs", flush=True)
if "prof" in sys.argv:
    import cProfile, pstats
    p, w = protects[int(sys.argv[2])]
    cProfile.run("for _ in range(50000): p(req, None)", "/tmp/lim/prof")
    pstats.Stats("/tmp/lim/prof").sort_stats("tottime").print_stats(18)
