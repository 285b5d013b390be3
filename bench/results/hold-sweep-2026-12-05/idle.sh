#!/bin/bash
# idle CPU of a worker: LABEL PORT ROOT; 60 s after ready
label=$1; port=$2; root=$3
d=/tmp/ab2/idle-$label; rm -rf $d; mkdir -p $d
cd $root
env PYTHONPATH=$root BUCKETSTREAM_APP_ID=idle$label$RANDOM taskset -c 0 /work/main/.venv/bin/python -c "import sys; from bucketstream.cli import main; sys.argv[0]=\"bucketstream\"; sys.exit(main())" worker --web-port $port --data-dir $d/data --capacity 1000000 --rate 1000000 > $d/log 2>&1 &
for i in $(seq 90); do [ "$(curl -s -o /dev/null -w '%{http_code}' localhost:$port/readyz)" = 200 ] && break; sleep 1; done
pid=$(pgrep -f "worker --web-port $port" | head -1)
sleep 10
c0=$(awk '{print $14+$15}' /proc/$pid/stat); sleep 60; c1=$(awk '{print $14+$15}' /proc/$pid/stat)
echo "$label idle cpu ms/s $(( (c1-c0)*10/60 ))"
kill $pid; wait $pid 2>/dev/null
