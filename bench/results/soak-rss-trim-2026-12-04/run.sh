#!/bin/bash
# The three-worker skewed soak, 20 minutes, with site/sitecustomize.py in every worker (see its first lines).
here=$(cd "$(dirname "$0")" && pwd)
rm -rf /tmp/rss-trim && mkdir -p /tmp/rss-trim
cd /work/main
PYTHONPATH=$here/site MI_OUT=/tmp/rss-trim .venv/bin/python -m bench --phases soak --soak-workers 3 --soak-traffic skewed \
  --soak-seconds 1200 --no-profile --out "$here/out" > "$here/bench.log" 2>&1
cp /tmp/rss-trim/mi-*.log "$here/"
