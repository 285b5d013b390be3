#!/bin/bash
# per-thread CPU and context switches of a worker over one hot and one unique 10 s run
source "$(dirname "$0")/start.sh"
snap(){ for t in /proc/$pid/task/*; do echo "$(basename $t) $(cat $t/comm | tr ' ' _) $(awk "{print \$14, \$15}" $t/stat) $(grep ctxt $t/status | awk '{print $2}' | tr '\n' ' ')"; done; }
taskset -c 1 wrk -t1 -c50 -d5s -s $here/hot.lua http://127.0.0.1:$port/protected >/dev/null
for kind in hot uniq; do
  snap > $d/b; out=$(taskset -c 1 wrk -t1 -c50 -d10s -s $here/$kind.lua http://127.0.0.1:$port/protected -- "t-$RANDOM-"); snap > $d/a
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "== $label $kind $n requests"; join $d/b $d/a | awk -v n=$n '{printf "%s %s user_us/req %.1f sys_us/req %.1f vol/kreq %.1f\n", $1, $2, ($8-$3)*1e4/n, ($9-$4)*1e4/n, ($10-$5)*1000/n}'
done
kill $pid; wait $pid 2>/dev/null
