#!/bin/bash
# A/B: three workers, skewed traffic, the fixed threshold (default) then glibc's own; RSS sampled every 0.5 s
here=$(pwd); cd "$(git rev-parse --show-toplevel)"
for mode in fixed own; do
  python3 $here/sample2.py $here/rss-skewed-$mode.log & s=$!
  if [ $mode = own ]; then extra="--worker-setting heap_mmap_threshold_kb=0"; else extra=""; fi
  .venv/bin/python -m bench --phases soak --soak-workers 3 --soak-traffic skewed --soak-seconds 300 --no-profile $extra --out $here/out-skewed-$mode > $here/bench-skewed-$mode.log 2>&1
  kill $s
done
echo done > $here/ab.done
