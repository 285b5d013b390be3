import sys, json, re
from collections import defaultdict
for i in (1, 2):
    for mode in ("fixed", "own"):
        f = f"./f-{mode}-{i}.log"
        d = defaultdict(list)
        for line in open(f):
            t, pid, rss, minflt, ticks = line.split()
            d[pid].append((float(t), int(rss), int(minflt), int(ticks)))
        pid, xs = max(d.items(), key=lambda kv: len(kv[1]))
        r = json.load(open(f"./out-f-{mode}-{i}/results.json"))["soak"][0]
        rows = r["rows"]
        # soak windows: the last 120 s of load; take the worker's samples over the last 120 s before the end of load
        log = open(f"./bench-f-{mode}-{i}.log").read()
        # the load ends ~ when the drain line prints; approximate: the last sample before shutdown minus 5 s
        end = xs[-1][0] - 8
        a = min(xs, key=lambda x: abs(x[0] - (end - 110)))
        b = min(xs, key=lambda x: abs(x[0] - end))
        reqs = sum(row["requests"] for row in rows)
        dt = b[0] - a[0]
        rate = reqs / 120
        n = rate * dt
        print(f"{mode}-{i}: offered {r['offered']:.0f}/s, window CPU µs/req {[round(x['cpu_us']) for x in rows]}, "
              f"minor faults per request {(b[2]-a[2])/n:.3f}, CPU µs/req from ticks {(b[3]-a[3])*10000/n:.0f}, "
              f"RSS {a[1]}->{b[1]}, p99 {[round(x['p99_ms'],2) for x in rows]}")
