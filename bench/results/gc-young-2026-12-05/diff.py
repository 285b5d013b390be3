"""perf.sh's two profiles side by side: µs per request by symbol and by library, new users minus one hot user.

usage: python3 diff.py DIR LABEL HOT_REQUESTS UNIQ_REQUESTS  (DIR: where perf.sh wrote LABEL-hot.data, LABEL-uniq.data)
cpu-clock samples at 2,000 Hz: one sample is 500 µs of the worker's CPU.
"""
import collections
import subprocess
import sys


def load(path):
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "dso,symbol", "--stdio", "-n"],
                         capture_output=True, text=True).stdout
    samples = collections.Counter()
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        samples[" ".join(parts[2:]).replace(" -      -", "").strip()] += int(parts[1])
    return samples


where, label, nh, nu = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
h, u = load(f"{where}/{label}-hot.data"), load(f"{where}/{label}-uniq.data")
us = 1e6 / 2000
print(f"total µs/request: hot {sum(h.values()) * us / nh:.2f}, new users {sum(u.values()) * us / nu:.2f}")
diff = {s: u[s] * us / nu - h[s] * us / nh for s in set(h) | set(u)}
for s, v in sorted(diff.items(), key=lambda x: -x[1])[:30]:
    print(f"{v:+.3f}  {s[:110]}")
by_lib = collections.Counter()
for s, v in diff.items():
    by_lib[s.split(" [")[0]] += v
print("by library:")
for lib, v in by_lib.most_common():
    print(f"{v:+.3f}  {lib}")
