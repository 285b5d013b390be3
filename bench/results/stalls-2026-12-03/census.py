"""Sum a STALL_LOG census (site/sitecustomize.py) by source: ``python census.py LOG...``."""
import collections
import re
import sys

SOURCES = [("resend_unconfirmed", "refill/resend timer"), ("Agent._execute_actor", "merge agent (Faust stream + apply_batch)"),
           ("_drain_messages", "Faust drain loop"), ("expire_idle", "expiry sweep"),
           ("_handle_request", "HTTP request handler"), ("on_partitions_assigned", "partition assignment (start)"),
           ("Service.start", "start-up")]
count, ms = collections.Counter(), collections.Counter()
for path in sys.argv[1:]:
    seen = set()
    for line in open(path):
        n, _, total, what = re.match(r"\s*(\d+) (\S+)\s+([\d.]+)ms\s+(.*)", line).groups()
        group = "GC pass inside" if what.startswith("GC+") else next(
            (name for pattern, name in SOURCES if pattern in what), what[:100])
        count[group] += int(n)
        if what not in seen:  # a line per length bucket, the total on each
            seen.add(what)
            ms[group] += float(total)
for group, n in count.most_common():
    print(f"{n:5d} stretches {ms[group]:8.1f} ms  {group}")
