"""`make bench` in its seconds-long smoke mode: it runs end to end and writes its results.

No assertion on speed: this proves the benchmark works (every phase starts and
stops its processes, wrk and redis-server are there or get installed, the
result files have their rows), not how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.cluster import ROOT

pytestmark = pytest.mark.broker

MISSING = [m for m in ("matplotlib", "redis") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(MISSING), reason=f"bench extras missing ({', '.join(MISSING)}): pip install -e '.[bench]'")
@pytest.mark.timeout(480)
def test_bench_smoke(broker, tmp_path):
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETSTREAM_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--phases",
         "ceiling,redis,worker,replication,limits,scaleout,recovery",
         "--broker", broker.bootstrap, "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=450,
    )
    assert done.returncode == 0, done.stdout[-4000:]

    md = (out / "results.md").read_text()
    for row in ("(1) ceiling: bare aiohttp handler", "(2) bucketstream, unique users", "(2) bucketstream, one hot user",
                "(3) aiohttp + Redis Lua, unique users", "(3) aiohttp + Redis Lua, one hot user",
                "## Kafka messages per request", "## Replication delay, three workers under load",
                "## Memory per bucket", "## Recovery from the changelog", "## Targets",
                "## Scale-out: one loaded worker, two listening", "## One limit vs two limits per request"):
        assert row in md, f"{row!r} missing from results.md:\n{md}"
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "make bench" in (out / "README-summary.md").read_text()

    results = json.loads((out / "results.json").read_text())
    measured = {(r["target"], r["scenario"]) for r in results["runs"] if r["offered"] == 0}
    assert measured >= {("ceiling", "unique"), ("bucketstream", "unique"), ("bucketstream", "hot"),
                        ("redis", "unique"), ("redis", "hot")}
    assert all(r["requests"] > 0 for r in results["runs"] if "requests" in r)
    hot = next(r for r in results["runs"] if r["target"] == "bucketstream" and r["scenario"] == "hot")
    assert hot["kafka"]["requests"] == hot["requests"]
    assert set(results["replication"]) == {"hot", "unique"}
    assert results["memory"]["keys_added"] >= 500
    assert results["recovery"]["ready_seconds"] is not None
    assert results["recovery"]["active_keys"] == 1_000
    # new users publish a record each unless workers hold back (bucketstream.hold)
    scale = results["scaleout"]["rules"]
    assert scale["publish all"]["traffic"]["unique"]["updates_per_request"] > 0.9
    assert scale["hold"]["traffic"]["unique"]["updates_per_request"] < 0.1
    assert results["limits"]["ratio"] is not None
    # #15's unique/hot ratio from runs back to back on one worker, each pair kept
    assert results["pairs"] and all(x["hot"] > 0 and x["unique"] > 0 and x["ratio"] > 0 for x in results["pairs"])
    assert "unique-user max ≥ 0.9 × hot-user max, back to back on one worker (#15)" in md
    # nothing the bench started is left running
    assert results["meta"]["pids"]
    for pid in results["meta"]["pids"]:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except FileNotFoundError:
            continue
        assert not any(name in cmdline for name in ("bench", "bucketstream", "redis-server")), \
            f"left running: {pid} {cmdline}"


@pytest.mark.skipif(bool(MISSING), reason=f"bench extras missing ({', '.join(MISSING)}): pip install -e '.[bench]'")
@pytest.mark.timeout(400)
def test_soak_smoke(broker, tmp_path):
    """The soak phase end to end in seconds: one worker and three, each count after its control run on
    as many bare handlers, both traffic kinds, a row per window with every column, targets evaluated (not
    asserted: no speed here)."""
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETSTREAM_")}
    done = subprocess.run(
        # Python's own young threshold: a seconds-long window of load under the default (10,000) may set off
        # no collector pass at all, and this test checks that the passes are read from /metrics
        [sys.executable, "-m", "bench", "--smoke", "--phases", "soak", "--broker", broker.bootstrap,
         "--worker-setting", "gc_young_threshold=700", "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=380,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    soak = json.loads((out / "results.json").read_text())["soak"]
    assert [(e["workers"], e["traffic"]) for e in soak] == [(1, "unique"), (1, "skewed"), (3, "unique"),
                                                           (3, "skewed")]
    for e in soak:
        assert e["offered"] > 0 and len(e["rows"]) >= 2, e
        for row in e["rows"]:
            assert row["requests"] > 0 and row["rss_max"] > 0 and row["store_max"] > 0, row
            assert len(row["rss"]) == e["workers"] and row["backlog"] >= 0, row
            # users seen once are not cached (Limiter.replica); the skewed mix's heavy users return
            assert row["cached"] > 0 if e["traffic"] == "skewed" else row["cached"] >= 0, row
            # p99 pools every worker's requests (wrk's grid of percentiles): at most the worst worker's
            assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p99_worst_ms"], row
            # a window of load allocates: the collector ran, and its pauses were read from /metrics
            assert row["gc_seconds"] > 0 and row["gc_full"] >= 0 and row["gc_longest"] > 0, row
            # the loop's wait for a core and the hypervisor's steal were read from /proc
            assert row["wait_ms_per_s"] >= 0 and row["steal_pct"] >= 0, row
            # the yardstick read the machine's speed during the window
            assert row["yardstick_us"] > 0, row
        assert e["drain_seconds"] is not None
    # the skewed mix's heavy users meet the soak's rule (C = 100, R = 10/s); new users never do
    assert all(r["non_2xx"] == 0 for e in soak if e["traffic"] == "unique" for r in e["rows"])
    assert any(r["non_2xx"] > 0 for e in soak if e["traffic"] == "skewed" for r in e["rows"])
    # their admissions are published and merged: the agents' lag was read from the workers
    assert any(r["merge_lag_p99"] is not None for e in soak if e["traffic"] == "skewed" for r in e["rows"])
    # before each worker count, its control: as many bare handlers under the same harness, every window read
    controls = json.loads((out / "results.json").read_text())["soak_controls"]
    assert [c["servers"] for c in controls] == [1, 3]
    # placed as the workers are: one alone on the server's core (when there are two), three on every core
    every = sorted(os.sched_getaffinity(0))
    assert controls[0]["cpus"] == (every[:1] if len(every) > 1 else every) and controls[1]["cpus"] == every
    for control in controls:
        assert control["offered"] > 0 and len(control["rows"]) >= 2, control
        for row in control["rows"]:
            assert row["requests"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["cpu_us"] > 0, row
            assert row["wait_ms_per_s"] >= 0 and row["yardstick_us"] > 0, row
    md = (out / "results.md").read_text()
    assert "### Control: the bare aiohttp handler × 1" in md and "### Control: the bare aiohttp handler × 3" in md
    assert "## Soak: minutes of fixed load" in md and md.count("| t (s) | req/s |") == 6
    assert md.count("| p99 ms | p99 worst ms |") == 4
    assert md.count("| GC ms (full passes, longest) | core wait ms/s (steal) | yardstick µs |") == 4
    assert md.count("| merge lag p99 s |") == 4
    assert md.count("RSS growth over the last half") == 4
