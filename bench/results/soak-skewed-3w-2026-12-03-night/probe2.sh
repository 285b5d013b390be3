#!/bin/bash
# a skewed 3-worker soak; every 30 s: each worker's /stats and per-thread CPU
cd /work/main
log=/tmp/prof/soak2.log
.venv/bin/python -m bench --phases soak --soak-workers 3 --soak-traffic skewed --soak-seconds 300 --no-profile --out /tmp/prof/out2 > $log 2>&1 &
bench=$!
until grep -q 'offering' $log; do sleep 1; done
pids=$(for p in $(pgrep -f 'bucketstream'); do tr '\0' ' ' < /proc/$p/cmdline | grep -q 'soak3s' && echo $p; done)
while kill -0 $bench 2>/dev/null; do
  t=$(date +%s)
  for p in $pids; do
    port=$(tr '\0' ' ' < /proc/$p/cmdline | grep -o -- '--web-port[= ][0-9]*' | grep -o '[0-9]*$')
    for task in /proc/$p/task/*; do
      echo "$t $p $(cat $task/comm | tr ' ' _) $(awk '{print $14+$15}' $task/stat)"
    done >> /tmp/prof/threads.txt
  done
  sleep 30
done
