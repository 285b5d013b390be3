#!/bin/bash
# usage: perf.sh LABEL PORT [ENV=...]: perf record (cpu-clock: this VM has no hardware counters) of one pinned worker
# during a hot and a new-user 10 s run, into LABEL-hot.data and LABEL-uniq.data; then diff.py LABEL HOT_REQ UNIQ_REQ
source "$(dirname "$0")/../newuser-store-read-2026-12-05/start.sh"
lua=$here/../newuser-store-read-2026-12-05
taskset -c 1 wrk -t1 -c50 -d5s -s $lua/hot.lua http://127.0.0.1:$port/protected >/dev/null  # warm
for kind in hot uniq; do
  perf record -e cpu-clock -F 2000 -p $pid -o $d/$label-$kind.data -- sleep 9 >/dev/null 2>&1 &
  rec=$!
  out=$(taskset -c 1 wrk -t1 -c50 -d10s -s $lua/$kind.lua http://127.0.0.1:$port/protected -- "p-$RANDOM-")
  wait $rec
  echo "$label $kind $(echo "$out" | awk '/requests in/ {print $1}')"
done
kill $pid; wait $pid 2>/dev/null
