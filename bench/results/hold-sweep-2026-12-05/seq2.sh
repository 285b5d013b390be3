#!/bin/bash
A="--phases worker --repeats 3 --fractions 0.5 --memory-keys 1000 --no-profile"
run_new(){ (cd /work/main && .venv/bin/python -m bench $A --out /tmp/ab2/new$1 > /tmp/ab2/new$1.log 2>&1); }
run_old(){ (cd /tmp/old && PYTHONPATH=/tmp/old /work/main/.venv/bin/python -m bench $A --out /tmp/ab2/old$1 > /tmp/ab2/old$1.log 2>&1); }
while [ ! -f /tmp/ab2/done ]; do sleep 5; done
run_old 3; run_new 4; run_old 4; run_new 5
/tmp/ab2/idle.sh new 8801 /work/main > /tmp/ab2/idle-new.txt 2>&1
/tmp/ab2/idle.sh old 8802 /tmp/old > /tmp/ab2/idle-old.txt 2>&1
/tmp/ab2/idle.sh new 8801 /work/main >> /tmp/ab2/idle-new.txt 2>&1
/tmp/ab2/idle.sh old 8802 /tmp/old >> /tmp/ab2/idle-old.txt 2>&1
echo done > /tmp/ab2/done2
