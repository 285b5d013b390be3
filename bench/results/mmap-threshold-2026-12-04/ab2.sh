#!/bin/bash
here=$(pwd); cd "$(git rev-parse --show-toplevel)"
for i in 1 2; do for mode in fixed own; do
  python3 $here/sample2.py $here/f-$mode-$i.log & s=$!
  if [ $mode = own ]; then extra="--worker-setting heap_mmap_threshold_kb=0"; else extra=""; fi
  .venv/bin/python -m bench --phases soak --soak-workers 1 --soak-traffic skewed --soak-seconds 120 --no-profile $extra --out $here/out-f-$mode-$i > $here/bench-f-$mode-$i.log 2>&1
  kill $s
done; done
echo done > $here/ab2.done
