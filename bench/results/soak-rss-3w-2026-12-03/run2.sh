#!/bin/bash
cd /tmp/probe
export PYTHONPATH=/tmp/rss/site:/tmp/probe
/work/main/.venv/bin/python -m bench --phases soak --soak-workers 3 --soak-traffic skewed --soak-seconds 300 --no-profile --out /tmp/rss/out-C > /tmp/rss/C.log 2>&1
