#!/bin/bash
# per-thread CPU and context switches of a worker over one hot and one unique 10 s run
here=$(cd "$(dirname "$0")" && pwd)
label=$1; port=$2; shift 2
d=/tmp/ab/$label; rm -rf $d; mkdir -p $d
cd "$here/../../.."
env "$@" BUCKETSTREAM_APP_ID=ab$label$RANDOM taskset -c 0 .venv/bin/python ${WRAP:-.venv/bin/bucketstream} worker --web-port $port --data-dir $d/data --capacity 1000000 --rate 1000000 > $d/log 2>&1 &
for i in $(seq 90); do [ "$(curl -s -o /dev/null -w '%{http_code}' localhost:$port/readyz)" = 200 ] && break; sleep 1; done
pid=$(pgrep -f "worker --web-port $port" | head -1)
snap(){ for t in /proc/$pid/task/*; do echo "$(basename $t) $(cat $t/comm | tr ' ' _) $(awk "{print \$14, \$15}" $t/stat) $(grep ctxt $t/status | awk '{print $2}' | tr '\n' ' ')"; done; }
taskset -c 1 wrk -t1 -c50 -d5s -s $here/hot.lua http://127.0.0.1:$port/protected >/dev/null
for kind in hot uniq; do
  snap > $d/b; out=$(taskset -c 1 wrk -t1 -c50 -d10s -s $here/$kind.lua http://127.0.0.1:$port/protected -- "t-$RANDOM-"); snap > $d/a
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "== $label $kind $n requests"; join $d/b $d/a | awk -v n=$n '{printf "%s %s user_us/req %.1f sys_us/req %.1f vol/kreq %.1f\n", $1, $2, ($8-$3)*1e4/n, ($9-$4)*1e4/n, ($10-$5)*1000/n}'
done
kill $pid; wait $pid 2>/dev/null
