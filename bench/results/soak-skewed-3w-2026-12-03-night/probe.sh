#!/bin/bash
# profile the three workers of a skewed 3-worker soak early (minute 1) and late (minute 5)
cd /work/main
log=/tmp/prof/soak.log
.venv/bin/python -m bench --phases soak --soak-workers 3 --soak-traffic skewed --soak-seconds 300 --no-profile --out /tmp/prof/out > $log 2>&1 &
bench=$!
until grep -q 'offering' $log; do sleep 1; done
sleep 15
pids=$(pgrep -f 'bench-soak3s' | while read p; do [ -n "$(grep -a worker /proc/$p/cmdline 2>/dev/null)" ] && echo $p; done)
pids=$(for p in $(pgrep -f 'bucketstream'); do tr '\0' ' ' < /proc/$p/cmdline | grep -q 'soak3s' && echo $p; done)
echo "pids: $pids" >> /tmp/prof/probe.log
for p in $pids; do .venv/bin/py-spy record -p $p -d 30 -r 100 -f raw --nonblocking -o /tmp/prof/early-$p.txt >/dev/null 2>&1 & done
wait $(jobs -p | grep -v "^$bench$") 2>/dev/null
sleep 195
for p in $pids; do .venv/bin/py-spy record -p $p -d 30 -r 100 -f raw --nonblocking -o /tmp/prof/late-$p.txt >/dev/null 2>&1 & done
wait $bench
echo done >> /tmp/prof/probe.log
