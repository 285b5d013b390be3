#!/bin/bash
A="--phases worker --repeats 3 --fractions 0.5 --memory-keys 1000 --no-profile"
run_new(){ (cd /work/main && .venv/bin/python -m bench $A --out /tmp/ab2/new$1 > /tmp/ab2/new$1.log 2>&1); }
run_old(){ (cd /tmp/old && PYTHONPATH=/tmp/old /work/main/.venv/bin/python -m bench $A --out /tmp/ab2/old$1 > /tmp/ab2/old$1.log 2>&1); }
run_new 1; run_old 1; run_new 2; run_old 2; run_new 3
echo done > /tmp/ab2/done
