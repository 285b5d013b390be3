#!/bin/bash
# alternate: default switch interval (a) and 0.5 ms (b), the rls phase each
cd "$(dirname "$0")/../../.."  # the repository
for i in 1 2; do
  for v in a b; do
    if [ $v = b ]; then export BS_SWITCH_INTERVAL=0.0005; else unset BS_SWITCH_INTERVAL; fi
    echo "== $v$i $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    PYTHONPATH=bench/results/rls-switch-2026-12-03 .venv/bin/python -m bench --phases rls --repeats 3 --no-profile --out /tmp/swi/$v$i 2>&1 | grep -E "rls |protected|wrk " | tail -8
  done
done
