#!/bin/bash
A="--phases worker --repeats 3 --fractions 0.5 --memory-keys 1000 --no-profile"
run_new(){ (cd /work/main && .venv/bin/python -m bench $A --out /tmp/ab2/adapt$1 > /tmp/ab2/adapt$1.log 2>&1); }
/tmp/ab2/idle.sh adapt 8801 /work/main > /tmp/ab2/idle-adapt.txt 2>&1
/tmp/ab2/idle.sh old 8802 /tmp/old >> /tmp/ab2/idle-old.txt 2>&1
/tmp/ab2/idle.sh adapt 8801 /work/main >> /tmp/ab2/idle-adapt.txt 2>&1
/tmp/ab2/idle.sh old 8802 /tmp/old >> /tmp/ab2/idle-old.txt 2>&1
run_new 1; run_new 2
echo done > /tmp/ab2/done3
