#!/bin/bash
# usage: run.sh LABEL PORT [env...]: start a worker pinned to core 0, pairs of hot/unique 10 s runs, CPU per request
source "$(dirname "$0")/start.sh"
cpu(){ awk '{print $14+$15}' /proc/$pid/stat; }
taskset -c 1 wrk -t1 -c50 -d5s -s $here/hot.lua http://127.0.0.1:$port/protected >/dev/null  # warm
for r in 1 2 3; do
  for kind in ${KINDS:-hot uniq}; do
    c0=$(cpu); out=$(taskset -c 1 wrk -t1 -c50 -d10s -s $here/$kind.lua http://127.0.0.1:$port/protected -- "p$r-$RANDOM-"); c1=$(cpu)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$label $kind round $r req $n cpu_us_per_req $(echo "($c1-$c0)*10000/$n" | bc -l | cut -c1-6)"
  done
done
kill $pid; wait $pid 2>/dev/null
