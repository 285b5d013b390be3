#!/bin/bash
cd /tmp/probe
export PYTHONPATH=/tmp/probe
run() { name=$1; shift
  /tmp/rss/sample.sh /tmp/rss/$name.samples & s=$!
  env "$@" /work/main/.venv/bin/python -m bench --phases soak --soak-workers 3 --soak-traffic skewed --soak-seconds 300 --no-profile --out /tmp/rss/out-$name > /tmp/rss/$name.log 2>&1
  kill $s
}
run A X=1
run B MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072
