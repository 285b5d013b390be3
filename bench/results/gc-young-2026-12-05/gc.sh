#!/bin/bash
# usage: gc.sh LABEL PORT [ENV=...]: one worker pinned to core 0 (../newuser-store-read-2026-12-05/start.sh), two
# rounds of a hot then a new-user 10 s run; per run the worker's CPU and minor page faults per request and the
# collector's seconds (bucketstream_gc_pause_seconds, all generations; summ.awk sums them per run)
source "$(dirname "$0")/../newuser-store-read-2026-12-05/start.sh"
lua=$here/../newuser-store-read-2026-12-05
cpu(){ awk '{print $14+$15}' /proc/$pid/stat; }
flt(){ awk '{print $10}' /proc/$pid/stat; }
gcs(){ curl -s localhost:$port/metrics | awk '/^bucketstream_gc_pause_seconds_(sum|count)/ {printf "%s=%s ", $1, $2}'; }
taskset -c 1 wrk -t1 -c50 -d5s -s $lua/hot.lua http://127.0.0.1:$port/protected >/dev/null  # warm
for r in 1 2; do
  for kind in hot uniq; do
    g0=$(gcs); f0=$(flt); c0=$(cpu)
    out=$(taskset -c 1 wrk -t1 -c50 -d10s -s $lua/$kind.lua http://127.0.0.1:$port/protected -- "p$r-$RANDOM-")
    c1=$(cpu); f1=$(flt); g1=$(gcs)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$label $kind round $r req $n cpu_us_per_req $(echo "($c1-$c0)*10000/$n" | bc -l | cut -c1-6) minflt_per_req $(echo "($f1-$f0)/$n" | bc -l | cut -c1-6)"
    echo "  before: $g0"; echo "  after:  $g1"
  done
done
kill $pid; wait $pid 2>/dev/null
