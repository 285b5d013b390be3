#!/bin/bash
# $1 name, $2 PYTHONPATH ('' = working tree); one idle worker, CPU over 30 s after 15 s settle
name=$1; pp=$2; port=$3
rm -rf /tmp/idle/d-$name
( cd /work/main && PYTHONPATH=$pp .venv/bin/bucketstream worker --web-port $port --broker kafka://127.0.0.1:9092 --data-dir /tmp/idle/d-$name --node-id idle-$name --app-id idle-$name >/tmp/idle/$name.log 2>&1 & )
for i in $(seq 90); do curl -fs localhost:$port/readyz >/dev/null && break; sleep 1; done
sleep 15
pid=$(pgrep -f "node-id idle-$name")
t0=$(awk '{print $14+$15}' /proc/$pid/stat); sleep 30; t1=$(awk '{print $14+$15}' /proc/$pid/stat)
echo "$name: $(( t1-t0 )) ticks in 30 s = $(python3 -c "print(f'{($t1-$t0)/3000:.1%}')") of a core"
kill $pid; sleep 2
