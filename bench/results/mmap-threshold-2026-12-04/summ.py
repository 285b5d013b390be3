import sys
from collections import defaultdict
for f in sys.argv[1:]:
    d=defaultdict(list)
    for line in open(f):
        t,pid,rss=line.split(); d[pid].append((float(t),int(rss)))
    print(f)
    for pid, xs in d.items():
        if len(xs) < 100: continue
        t0=xs[0][0]
        # from 90 s in (caches full) to the end of load (drop the last 15 s: shutdown)
        end = xs[-1][0]-15
        w=[r for t,r in xs if 90 <= t-t0 <= end]
        jumps=sum(1 for i in range(1,len(xs)) if 90<=xs[i][0]-t0<=end and xs[i][1]-xs[i-1][1] >= 3)
        drops=sum(1 for i in range(1,len(xs)) if 90<=xs[i][0]-t0<=end and xs[i][1]-xs[i-1][1] <= -3)
        print(f"  worker {pid}: RSS {min(w)}-{max(w)} MiB (range {max(w)-min(w)}), steps up >=3 MiB: {jumps}, down: {drops}")
