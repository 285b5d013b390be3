"""``make bench``: bucketstream against a bare aiohttp ceiling and a centralized Redis design.

Run ``python -m bench`` (``--help`` for options, ``--smoke`` for a seconds-long
run). Results go to ``bench/results/``: ``results.md`` (tables),
``latency.png`` (latency against offered load), ``results.json`` (the
numbers) and ``README-summary.md`` (the block docs/performance.md quotes).
"""
