#!/bin/bash
for r in 1 2; do
(cd /tmp && PYTHONPATH=/tmp/before /work/main/.venv/bin/python -m bench --phases replication --no-profile --out /tmp/repl-before-$r > /tmp/repl-before-$r.log 2>&1)
(cd /work/main && .venv/bin/python -m bench --phases replication --no-profile --out /tmp/repl-after-$r > /tmp/repl-after-$r.log 2>&1)
done
