"""Results of a bench run: ``results.json``, ``results.md``, ``latency.png`` and ``README-summary.md``."""

from __future__ import annotations

import json
from pathlib import Path

from bench import grpcload, profile, scaleout, soak

#: (target, scenario, label) of the rows compared with the ceiling, in table order.
SYSTEMS = [
    ("ceiling", "unique", "(1) ceiling: bare aiohttp handler"),
    ("bucketstream", "unique", "(2) bucketstream, unique users"),
    ("bucketstream", "hot", "(2) bucketstream, one hot user"),
    ("redis", "unique", "(3) aiohttp + Redis Lua, unique users"),
    ("redis", "hot", "(3) aiohttp + Redis Lua, one hot user"),
]
HALF = 0.5

TARGET_TEXT = {
    "tput": "(2) throughput ≥ 0.8 × ceiling",
    "p99": "(2) p99 at half load ≤ 2 × ceiling's",
    "vs_redis": "(2) throughput ≥ 3 × (3)",
    "hot_msgs": "≤ 0.05 Kafka messages per request, hot key",
    "recovery": "1,000,000 keys recovered in ≤ 60 s",
    "pairs": "unique-user max ≥ 0.9 × hot-user max, back to back on one worker (#15)",
}


def _runs(results: dict, target: str, scenario: str) -> list[dict]:
    return [r for r in results["runs"] if r["target"] == target and r["scenario"] == scenario]


def max_run(results: dict, target: str, scenario: str) -> dict | None:
    return next((r for r in _runs(results, target, scenario) if r["offered"] == 0 and "skipped" not in r), None)


def ceiling_rps(results: dict) -> float | None:
    r = max_run(results, "ceiling", "unique")
    return r["rps"] if r else None


def run_at(results: dict, target: str, scenario: str, offered: float) -> dict | None:
    return next((r for r in _runs(results, target, scenario)
                 if r["offered"] and abs(r["offered"] - offered) <= 1e-3 * offered), None)


def fixed_run(results: dict, target: str, scenario: str, fraction: float) -> dict | None:
    base = ceiling_rps(results)
    return run_at(results, target, scenario, fraction * base) if base else None


def sustained(results: dict, target: str, scenario: str) -> tuple[float | None, float | None]:
    """(highest fixed offered load the target kept up with, lowest it did not), req/s.

    Kept up: wrk got the offered rate, and (bucketstream) the worker's Kafka writes did not
    go on after the load (no backlog)."""
    ok, failed = [], []
    for r in _runs(results, target, scenario):
        if not r["offered"] or "skipped" in r:
            continue
        (failed if r.get("saturated") or r.get("backlog") else ok).append(r["offered"])
    return (max(ok) if ok else None), (min(failed) if failed else None)


def _sustained_cell(results: dict, target: str, scenario: str, base: float | None) -> str:
    ok, failed = sustained(results, target, scenario)
    if ok is None and failed is None:
        return "-"
    if ok is None:
        return f"< {_int(failed)} ({_ratio(failed, base)})"
    return f"≥ {_int(ok)} ({_ratio(ok, base)})"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _ratio(x: float | None, base: float | None) -> str:
    if x is None or not base:
        return "-"
    return f"{x / base:.2f}×"


def _int(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _bytes(x) -> str:
    if x is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= size:
            return f"{x / size:.1f} {unit}"
    return f"{x:.0f} B"


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if "skipped" in r:
        return "not run (" + r["skipped"] + ")"
    text = f"{_ms(r['p50_ms'])} / {_ms(r['p99_ms'])}"
    if r.get("saturated"):
        text += f" (saturated: got {r['rps']:,.0f}/s)"
    elif r.get("backlog"):
        text += f" (Kafka backlog: writes went on {r['kafka']['drain_seconds']:.0f} s)"
    return text


def throughput_table(results: dict) -> list[str]:
    base_run = max_run(results, "ceiling", "unique")
    half_base = fixed_run(results, "ceiling", "unique", HALF)
    base = base_run["rps"] if base_run else None
    half_rate = HALF * base if base else None
    lines = [
        f"| design | max req/s | × ceiling | p50 ms at max | p99 ms at max | p50 ms at half load "
        f"({_int(half_rate)} req/s) | × ceiling | p99 ms at half load | × ceiling | sustained req/s (× ceiling) "
        "| errors / non-2xx | CPU µs per request at max: server + its store |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target, scenario, label in SYSTEMS:
        m = max_run(results, target, scenario)
        h = fixed_run(results, target, scenario, HALF)
        if m is None and h is None:
            continue
        if h is not None and ("skipped" in h or h.get("saturated") or h.get("backlog")):
            why = "Kafka backlog" if h.get("backlog") or "backlog" in h.get("skipped", "") else "saturated"
            got = f" ({why}{': got ' + _int(h['rps']) + '/s' if 'rps' in h else ''})"
            half_cells = [f"-{got}", "-", "-", "-"]
        elif h is not None:
            half_cells = [_ms(h["p50_ms"]), _ratio(h["p50_ms"], half_base and half_base["p50_ms"]),
                          _ms(h["p99_ms"]), _ratio(h["p99_ms"], half_base and half_base["p99_ms"])]
        else:
            half_cells = ["-"] * 4
        half_cells.append(_sustained_cell(results, target, scenario, base))
        errors = "-" if m is None else f"{m['errors']:,} / {m['non_2xx']:,}"
        if m is not None and len(m.get("repeats", [])) > 1:
            label += " (median of " + ", ".join(_int(x) for x in sorted(m["repeats"])) + ")"
        lines.append(f"| {label} | {_int(m and m['rps'])} | {_ratio(m and m['rps'], base)} | "
                     f"{_ms(m and m['p50_ms'])} | {_ms(m and m['p99_ms'])} | " + " | ".join(half_cells) +
                     f" | {errors} | {_cpu(m)} |")
    return lines


def _le(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return "∞"
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _cpu(r: dict | None) -> str:
    """CPU µs per request of the server process, and of the store it relies on (Redis, the Kafka broker)."""
    if not r or not r.get("cpu_seconds") or not r.get("requests"):
        return "-"
    c = r["cpu_seconds"]
    text = f"{c['server'] / r['requests'] * 1e6:.0f}"
    if "store" in c:
        text += f" + {c['store'] / r['requests'] * 1e6:.0f}"
    return text


def sweep_table(results: dict) -> list[str]:
    base = ceiling_rps(results)
    if not base:
        return []
    rates: list[float] = []
    for r in sorted(results["runs"], key=lambda r: r["offered"]):
        if r["offered"] and not any(abs(r["offered"] - x) <= 1e-3 * x for x in rates):
            rates.append(r["offered"])
    present = [(t, s, label) for t, s, label in SYSTEMS if _runs(results, t, s)]
    lines = ["| offered req/s | × ceiling | " + " | ".join(label.split(":")[0] if t == "ceiling" else label
                                                      for t, s, label in present) + " |",
             "|---:|---:|" + "---:|" * len(present)]
    for rate in rates:
        cells = [_cell(run_at(results, t, s, rate)) for t, s, _ in present]
        frac = rate / base
        lines.append(f"| {_int(rate)} | {frac:.3f} | " + " | ".join(cells) + " |")
    return lines


def kafka_rows(results: dict) -> list[tuple[str, dict, float]]:
    """(label, kafka entry, req/s) of every run that counted Kafka records."""
    base = ceiling_rps(results)
    out = []
    for r in results["runs"]:
        if "kafka" not in r:
            continue
        load = "max load" if not r["offered"] else (
            f"{r['offered']:,.0f} req/s offered" + (f" ({r['offered'] / base:.3g}× ceiling)" if base else ""))
        out.append((f"{r['scenario']} users, 1 worker, {load}", r["kafka"], r["rps"]))
    for scenario, e in results["replication"].items():
        if "kafka" in e:
            out.append((f"{scenario} users, 3 workers, {e['offered_total']:,.0f} req/s offered", e["kafka"],
                        e["achieved_total"]))
    return out


def replication_rows(results: dict) -> list[tuple[str, float, dict]]:
    """(scenario, load as a fraction of the ceiling, entry) of every replication run, lighter loads first."""
    load = (results.get("config") or {}).get("replication_load", 0.1)
    rows = [(e["scenario"], e["fraction"], e) for e in results.get("replication_sweep", [])]
    rows += [(sc, load, e) for sc, e in results["replication"].items()]
    order = {"hot": 0, "unique": 1}
    return sorted(rows, key=lambda r: (order.get(r[0], 2), r[1]))


def kafka_table(results: dict) -> list[str]:
    lines = ["| run | req/s | requests | update-topic records | per request | changelog records "
             "| per request | total per request | writes went on after the load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, k, rps in kafka_rows(results):
        lines.append(f"| {label} | {_int(rps)} | {_int(k['requests'])} | {_int(k['updates'])} | "
                     f"{_per(k['updates_per_request'])} | {_int(k['changelog'])} | {_per(k['changelog_per_request'])} "
                     f"| {_per(k['total_per_request'])} | {k['drain_seconds']:.1f} s |")
    return lines


def _per(x) -> str:
    return "-" if x is None else f"{x:.4f}" if x < 0.1 else f"{x:.3f}"


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    base = ceiling_rps(results)
    half_base = fixed_run(results, "ceiling", "unique", HALF)
    for scenario in ("unique", "hot"):
        m = max_run(results, "bucketstream", scenario)
        if m and base:
            x = m["rps"] / base
            note = ""
            if m.get("kafka", {}).get("drain_seconds", 0) > 3:
                note = f"; Kafka writes went on {m['kafka']['drain_seconds']:.0f} s after the load"
            out.append((f"{TARGET_TEXT['tput']} ({scenario} users, max)", f"{x:.2f}×{note}", x >= 0.8))
            ok, failed = sustained(results, "bucketstream", scenario)
            if ok is not None or failed is not None:
                out.append((f"{TARGET_TEXT['tput']} ({scenario} users, sustained)",
                            _sustained_cell(results, "bucketstream", scenario, base),
                            ok is not None and ok >= 0.8 * base))
        h = fixed_run(results, "bucketstream", scenario, HALF)
        if h and half_base and "skipped" not in h:
            x = h["p99_ms"] / half_base["p99_ms"]
            ok = x <= 2 and not h.get("saturated") and not h.get("backlog")
            why = " (saturated)" if h.get("saturated") else " (Kafka backlog)" if h.get("backlog") else ""
            out.append((f"{TARGET_TEXT['p99']} ({scenario} users)",
                        f"{_ms(h['p99_ms'])} ms vs {_ms(half_base['p99_ms'])} ms = {x:.2f}×{why}", ok))
        elif h and half_base:
            out.append((f"{TARGET_TEXT['p99']} ({scenario} users)", f"not run: {h['skipped']}", False))
        r = max_run(results, "redis", scenario)
        if m and r:
            x = m["rps"] / r["rps"]
            out.append((f"{TARGET_TEXT['vs_redis']} ({scenario} users)",
                        f"{_int(m['rps'])} vs {_int(r['rps'])} req/s = {x:.2f}×", x >= 3))
    ratios = sorted(x["ratio"] for x in results.get("pairs", []) if x["ratio"] is not None)
    if ratios:
        median = ratios[len(ratios) // 2]
        pairs = ", ".join(f"{_int(x['unique'])} / {_int(x['hot'])}" for x in results["pairs"])
        out.append((TARGET_TEXT["pairs"], f"median {median:.2f}× (unique / hot req/s: {pairs})", median >= 0.9))
    for label, k, _ in kafka_rows(results):
        if label.startswith("hot") and k["requests"]:
            out.append((f"{TARGET_TEXT['hot_msgs']} ({label.removeprefix('hot users, ')})",
                        f"{_per(k['total_per_request'])} ({_per(k['updates_per_request'])} update + "
                        f"{_per(k['changelog_per_request'])} changelog)", k["total_per_request"] <= 0.05))
    rec = results["recovery"]
    if rec:
        ready = rec.get("ready_seconds")
        if rec["keys"] >= 1_000_000:
            out.append((TARGET_TEXT["recovery"], f"{rec['keys']:,} keys: " +
                        (f"{ready:.1f} s" if ready else f"not ready in {rec['timeout']:.0f} s"),
                        ready is not None and ready <= 60 * rec["keys"] / 1_000_000))
        else:
            out.append((TARGET_TEXT["recovery"], f"only {rec['keys']:,} keys measured: " +
                        (f"{ready:.1f} s" if ready else "not ready"), None))
    out += soak.targets(results)
    out += scaleout.target_rows(results)
    return out


def target_summary(results: dict) -> list[tuple[str, str]]:
    """One line per target of the issue: the key numbers, met or missed."""
    groups: dict[str, list[tuple[str, str, bool | None]]] = {}
    for name, value, ok in targets(results):
        key = next((k for k, text in TARGET_TEXT.items() if name.startswith(text)), name)
        groups.setdefault(key, []).append((name, value, ok))
    out = []
    for key, rows in groups.items():
        text = TARGET_TEXT.get(key, key)
        if key == "hot_msgs":
            hot = sorted(((rps / k["workers"], k) for label, k, rps in kafka_rows(results)
                          if label.startswith("hot") and k["requests"]), key=lambda x: x[0])
            met = [rate for rate, k in hot if k["total_per_request"] <= 0.05]
            verdict = ("met" if len(met) == len(hot) else
                       f"met from {_int(min(met))} req/s per worker up" if met else "**missed**")
            values = ", ".join(f"{_per(k['total_per_request'])} at {_int(rate)} req/s"
                               + (f" per worker ({k['workers']} workers)" if k["workers"] > 1 else "")
                               for rate, k in hot)
            out.append((text, f"{verdict}: {values}. Each worker writes one update and one changelog record "
                              "per flush interval (10 ms) while the key is busy, whatever the request rate"))
            continue
        verdict = "met" if all(r[2] for r in rows) else "**missed**" if any(r[2] is False for r in rows) else "n/a"
        details = "; ".join((r[0][len(text):].strip(" ()") + ": " if r[0] != text else "") + r[1] for r in rows)
        out.append((text, f"{verdict}: {details}"))
    return out


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "**missed**"


def markdown(results: dict) -> str:
    meta, cfg = results["meta"], results["config"]
    base = ceiling_rps(results)
    out = [
        "# bucketstream bench results",
        "",
        f"Generated by `{meta.get('command', 'make bench')}` on {meta.get('date')}, in "
        f"{meta.get('bench_seconds', 0) / 60:.1f} min. Machine: {meta.get('machine')}.",
        f"Load at start: `{meta.get('load_start')}`; at end: `{meta.get('load_end')}` "
        "(other jobs on the machine make the numbers noisy when the load average is well above 0).",
        f"Pinning: {meta.get('pinning')}. wrk: one thread, {cfg.get('connections')} connections, "
        f"{cfg.get('duration'):g} s per run, POST /protected with X-User-ID. Every bucket has room for every request "
        "(capacity = rate = 1,000,000), so every answer is an admission (the costly path).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) +
        f", Python {meta.get('python')}.",
    ]
    if cfg.get("worker_settings"):
        out.append("Worker settings beside the defaults (`--worker-setting`): " +
                   ", ".join(f"{k} = {v}" for k, v in cfg["worker_settings"].items()) + ".")
    out += [
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {value} | {_mark(ok)} |" for name, value, ok in targets(results)]
    out += ["", "## Throughput and latency, as ratios to the ceiling (1)", ""]
    out += throughput_table(results)
    idle = results.get("idle_cpu") or {}
    if idle:
        names = {"ceiling": "(1) ceiling", "redis": "(3) Redis app + redis-server",
                 "bucketstream": "(2) bucketstream worker + Kafka broker"}
        out += ["", "With no request at all, each design already uses (share of one core): " + "; ".join(
            f"{names.get(t, t)} {' + '.join(f'{x * 100:.0f} %' for x in v.values())}" for t, v in idle.items())
            + ". At a low fixed load that fixed cost dominates the CPU per request."]
    out += ["", "\"max\": as fast as wrk's connections get answers; \"half load\": a fixed offered load of half the "
                "ceiling's max (paced by wrk's Lua script, see bench/loadgen.py). \"Sustained\": the highest fixed "
                "load the design kept up with (wrk got the rate, and a worker's Kafka writes did not go on more than "
                "3 s after the load), or below the lowest one it did not keep up with. CPU per request: user + system "
                "time of the server process (all its threads) during the run, divided by the requests, and the same "
                "for redis-server or the Kafka broker when the bench started it; on a busy machine it is steadier "
                "than req/s.", ""]
    if base:
        out += ["## Latency against offered load (p50 / p99 ms)", "", "![latency](latency.png)", ""]
        out += sweep_table(results)
        out += ["", "A *saturated* run could not be offered its load: the achieved rate fell more than 5 % short, "
                    "the latency shown is then that of a closed loop (queueing in the client is not counted); "
                    "higher loads were not run.", ""]
    if kafka_rows(results):
        out += ["## Kafka messages per request", ""] + kafka_table(results)
        out += ["", "Records written to the app's update topic (workers' flushed states) and to the table changelog "
                    "(the merge agent's writes), from the topics' end offsets once they stopped moving before the "
                    "run and after it. \"Writes went on\" is how long after wrk stopped the end offsets kept "
                    "moving (within 0.5 s): a worker that cannot keep its Kafka writes up with its HTTP answers "
                    "builds a backlog there, and its req/s are not sustainable.", ""]
    rep = results["replication"]
    if rep:
        out += ["## Replication delay, three workers under load", "",
                "| users | offered req/s (total) | achieved | whole phase, all workers: p50 / p99 | "
                "end of the phase: p50 (median of workers) | worst worker p99 | worst max | HTTP p99 ms | "
                "per worker p50 / p99 ms (samples) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for scenario, e in rep.items():
            per = "; ".join(f"{_ms(w['p50'] * 1000) if w['p50'] is not None else '-'} / "
                            f"{_ms(w['p99'] * 1000) if w['p99'] is not None else '-'} ({w['samples']})"
                            for w in e["workers"])
            h = e.get("histogram") or {}
            whole = (f"≤ {_le(h.get('p50_le'))} / ≤ {_le(h.get('p99_le'))} ({_int(h.get('samples'))} samples)"
                     if h.get("samples") else "-")
            out.append(f"| {scenario} | {_int(e['offered_total'])} | {_int(e['achieved_total'])} | {whole} | "
                       f"{_ms(e['p50_ms'])} ms | {_ms(e['p99_ms'])} ms | {_ms(e['max_ms'])} ms | "
                       f"{_ms(e['p99_ms_http'])} | {per} |")
        out += ["", "Replication delay: first admission of a flushed batch until the worker's view shows it back "
                    "from Kafka (the same hop that brings it to the other workers). Whole phase: the workers' "
                    "Prometheus histograms (bucket bounds 5, 10, 20, 50, 75, 100, 150, 200, 500 ms, 1, 2, 5, 10 s), "
                    "pooled; end of the phase: each worker's `/stats` summary of its most recent samples. All three "
                    "workers share the two cores with the broker and three wrk processes."]
        rows = replication_rows(results)
        if len(rows) > len(rep):
            out += ["", "### Replication delay against load", "",
                    "| users | offered req/s (total) | × ceiling | achieved | machine CPU busy (2 cores) | "
                    "whole run: p50 / p99 | delays > 100 ms | HTTP p99 ms (worst worker) |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for sc, fraction, e in rows:
                h = e.get("histogram") or {}
                over = (e.get("stalls") or {}).get("delay_over_100ms")
                share = f"{over:,} ({100 * over / h['samples']:.2g} %)" if over is not None and h.get("samples") \
                    else "-"
                busy = f"{100 * e['busy']:.0f} %" if e.get("busy") is not None else "-"
                out.append(f"| {sc} | {_int(e['offered_total'])} | {fraction:g} | {_int(e['achieved_total'])} | "
                           f"{busy} | ≤ {_le(h.get('p50_le'))} / ≤ {_le(h.get('p99_le'))} | {share} | "
                           f"{_ms(e['p99_ms_http'])} |")
            out += ["", "Each row is one 15 s run on the same three workers, lighter loads first; p50 / p99 are "
                        "upper bounds from the pooled histograms. \"Machine CPU busy\" is the whole box's "
                        "(/proc/stat): the workers, the broker and the three wrk processes together."]
        stalled = [(sc, e["stalls"]) for sc, e in rep.items() if e.get("stalls")]
        if stalled:
            out += ["", "What the delay's tail waits behind, pooled over the three workers during the phase:", "",
                    "| users | delays > 100 ms | Kafka hop p50 / p99 (worst worker) | event-loop lag p50 / p99 | "
                    "loop stretches > 50 ms | > 100 ms | full collections (p99) | of them > 50 ms |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for sc, st in stalled:
                lag, gc_full = st["loop_lag"], st["gc_full"]
                hops = [w["peer_lag"] for w in rep[sc]["workers"] if (w.get("peer_lag") or {}).get("samples")]
                hop = (f"{_ms(max(h['p50'] for h in hops) * 1000)} / {_ms(max(h['p99'] for h in hops) * 1000)} ms"
                       if hops else "-")
                out.append(f"| {sc} | {_int(st['delay_over_100ms'])} | {hop} | ≤ {_le(lag.get('p50_le'))} / "
                           f"≤ {_le(lag.get('p99_le'))} | {_int(st['loop_over_50ms'])} | "
                           f"{_int(st['loop_over_100ms'])} | {_int(gc_full.get('samples'))} "
                           f"(≤ {_le(gc_full.get('p99_le'))}) | {_int(st['gc_full_over_50ms'])} |")
            out += ["", "Kafka hop: a flushed record's produce timestamp until the peer feed of a worker read it "
                        "(the last 4096 fetches of each worker; `/stats` `peer_lag`). "
                        "Event-loop lag: how late each worker's loop woke a 50 ms sleep "
                        "(`bucketstream_event_loop_lag_seconds`, one sample per wake); full collections: "
                        "generation-2 passes of the garbage collector (`bucketstream_gc_pause_seconds`)."]
        if any(e.get("mixed_with_earlier") for e in rep.values()):
            out.append("Some of these summaries include samples of the phase before (fewer than 4096 in this one).")
        out.append("")
    mem = results["memory"]
    if mem.get("keys_added") is not None:
        out += ["## Memory per bucket", "",
                "| buckets | how | RSS before | RSS after | RSS per bucket | RocksDB dir per bucket (incl. WAL) |",
                "|---:|---|---:|---:|---:|---:|",
                f"| {_int(mem['keys_added'])} | active: new users, one token each over HTTP at "
                f"{_int(mem['rate'])} req/s, on a fresh worker; all in the decoded cache "
                f"({_int(mem['cached_keys'])} entries, limit {_int(mem['cache_limit'])}) | {_bytes(mem['rss_before'])} "
                f"| {_bytes(mem['rss_after'])} | {mem['rss_per_key']:.0f} B | {mem['disk_per_key']:.0f} B |"]
        rec = results["recovery"]
        if rec and rec.get("ready_seconds") and rec.get("rss_empty_worker") and rec.get("active_keys"):
            n = rec["active_keys"]
            out.append(f"| {_int(n)} | idle: recovered from the changelog by a fresh worker, none decoded "
                       f"| {_bytes(rec['rss_empty_worker'])} (an empty worker) | {_bytes(rec['rss_after'])} | "
                       f"{(rec['rss_after'] - rec['rss_empty_worker']) / n:.0f} B | {rec['disk_after'] / n:.0f} B |")
        out.append("")
    rec = results["recovery"]
    if rec:
        ready = rec.get("ready_seconds")
        out += ["## Recovery from the changelog", "",
                "| keys | produce time | fresh worker: web up | ready (/readyz 200) | keys/s | RSS after | "
                "RocksDB dir after | bytes per record (key + value) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {_int(rec['keys'])} | {rec['produce_seconds']:.1f} s | {rec['healthz_seconds']:.1f} s | "
                f"{'%.1f s' % ready if ready else 'not within %.0f s' % rec['timeout']} | "
                f"{_int(rec.get('keys_per_second'))} | {_bytes(rec['rss_after'])} | {_bytes(rec['disk_after'])} | "
                f"{rec['key_bytes']:.0f} + {rec['value_bytes']:.0f} |", "",
                "Realistic states (1-3 node counters, 63-bit slots, wasted register) written straight to "
                "`<app_id>-buckets-changelog`; one worker with a new data directory, timed from process start.", ""]
    out += grpcload.markdown(results)
    out += scaleout.markdown(results)
    limits = results.get("limits")
    if limits:
        def us(x):
            return f"{x * 1e6:.0f} µs" if x else "—"
        ratio = limits.get("ratio")
        out += ["## One limit vs two limits per request (#18)", "",
                "| limits per request | worker CPU per request (median) | req/s at max load (median) |",
                "|---:|---:|---:|",
                f"| 1 | {us(limits['1']['cpu_per_request'])} | {_int(limits['1']['rps'])} |",
                f"| 2 | {us(limits['2']['cpu_per_request'])} | {_int(limits['2']['rps'])} |", "",
                f"Two limits cost {ratio:.2f}x the CPU per request of one (target ≤ 1.3x): "
                f"{_mark(ratio <= 1.3)}." if ratio else "No ratio: a run made no requests.", ""]
    out += soak.markdown(results)
    if results["profiles"]:
        out += ["## Profiles (py-spy)", ""]
        for name, summary in results["profiles"].items():
            extra = f" (wrk got {summary['rps_while_profiled']:,.0f} req/s while sampled)" \
                if "rps_while_profiled" in summary else ""
            out += [profile.render(name + extra, summary), ""]
    return "\n".join(out).rstrip() + "\n"


def summary_block(results: dict) -> str:
    meta = results["meta"]
    base = ceiling_rps(results)
    half = fixed_run(results, "ceiling", "unique", HALF)
    lines = [
        "### Performance (`make bench`)",
        "",
        f"One run of `make bench` ({meta.get('bench_seconds', 0) / 60:.0f} min) on a 2-core machine, "
        f"{meta.get('date')}, load average at start {meta.get('load_start', '').split('load average:')[-1].strip()}; "
        "each server in one process on one core, wrk on the other. Full tables, the latency plot and profiles: "
        "[bench/results/results.md](bench/results/results.md).",
        "",
        "| design | max req/s (× ceiling) | sustained req/s (× ceiling) | "
        f"p50 / p99 ms at {_int(base and HALF * base)} req/s (× ceiling) |",
        "|---|---:|---:|---:|",
    ]
    for target, scenario, label in SYSTEMS:
        m = max_run(results, target, scenario)
        if m is None:
            continue
        h = fixed_run(results, target, scenario, HALF)
        if h is None:
            at_half = "-"
        elif "skipped" in h or h.get("saturated") or h.get("backlog"):
            at_half = "not sustained"
        else:
            at_half = (f"{_ms(h['p50_ms'])} / {_ms(h['p99_ms'])} ({_ratio(h['p50_ms'], half and half['p50_ms'])} / "
                       f"{_ratio(h['p99_ms'], half and half['p99_ms'])})")
        lines.append(f"| {label} | {_int(m['rps'])} ({_ratio(m['rps'], base)}) | "
                     f"{_sustained_cell(results, target, scenario, base)} | {at_half} |")
    facts = []
    for scenario in ("hot", "unique"):
        m = max_run(results, "bucketstream", scenario)
        if m and "kafka" in m and m["kafka"]["requests"]:
            k = m["kafka"]
            facts.append(f"Kafka records per request, {scenario} user(s), one worker at max load: "
                         f"{_per(k['total_per_request'])} ({_per(k['updates_per_request'])} update + "
                         f"{_per(k['changelog_per_request'])} changelog; writes went on {k['drain_seconds']:.0f} s "
                         "after the load)")
    rows = replication_rows(results)
    for scenario, e in results["replication"].items():
        h = e.get("histogram") or {}
        mine = [r for sc, _, r in rows if sc == scenario and (r.get("histogram") or {}).get("samples")]
        if len(mine) > 1:
            facts.append(f"replication delay p99, three workers, {scenario} user(s): " + ", ".join(
                f"≤ {_le(r['histogram']['p99_le'])} at {_int(r['achieved_total'])} req/s"
                + (f" (machine {100 * r['busy']:.0f} % busy)" if r.get("busy") is not None else "")
                for r in mine))
        elif h.get("samples"):
            facts.append(f"replication delay, three workers, {scenario} user(s), {_int(e['achieved_total'])} req/s "
                         f"in total: p50 ≤ {_le(h['p50_le'])}, p99 ≤ {_le(h['p99_le'])}")
        else:
            facts.append(f"replication delay, three workers, {scenario} user(s), {_int(e['achieved_total'])} req/s: "
                         f"p50 {_ms(e['p50_ms'])} ms, worst p99 {_ms(e['p99_ms'])} ms")
    mem = results["memory"]
    if mem.get("keys_added"):
        facts.append(f"memory per active bucket: {mem['rss_per_key']:.0f} B of RSS (decoded cache included), "
                     f"{mem['disk_per_key']:.0f} B in RocksDB")
    rec = results["recovery"]
    if rec:
        ready = rec.get("ready_seconds")
        facts.append(f"a fresh worker recovers {rec['keys']:,} keys from the changelog in " +
                     (f"{ready:.0f} s" if ready else f"more than {rec['timeout']:.0f} s"))
    lines += [""] + [f"- {f}" for f in facts]
    lines += ["", "| target | where it stands |", "|---|---|"]
    lines += [f"| {name} | {text} |" for name, text in target_summary(results)]
    lines += ["", "Reproduce: `make bench` (results in `bench/results/`); `make bench BENCH_ARGS=--smoke` "
                  "is the seconds-long version `make test` runs."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    base = ceiling_rps(results)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharex=True)
    styles = {("ceiling", "unique"): ("black", "o", "-"), ("bucketstream", "unique"): ("tab:blue", "s", "-"),
              ("bucketstream", "hot"): ("tab:cyan", "^", "--"), ("redis", "unique"): ("tab:red", "D", "-"),
              ("redis", "hot"): ("tab:orange", "v", "--")}
    for (target, scenario, label) in SYSTEMS:
        runs = sorted((r for r in _runs(results, target, scenario) if r["offered"] and "skipped" not in r),
                      key=lambda r: r["offered"])
        ok = [r for r in runs if not r["saturated"] and not r.get("backlog")]
        m = max_run(results, target, scenario)
        if not runs and not m:
            continue
        color, marker, ls = styles[(target, scenario)]
        for ax, key in zip(axes, ("p50_ms", "p99_ms")):
            ax.plot([r["offered"] for r in ok], [r[key] for r in ok], color=color, marker=marker, ls=ls,
                    label=label)
            sat = [r for r in runs if r["saturated"] or r.get("backlog")]
            if sat:
                ax.scatter([r["offered"] for r in sat], [r[key] for r in sat], color=color, marker="x", s=60)
            if m:
                ax.axvline(m["rps"], color=color, ls=":", lw=1)
                ax.scatter([m["rps"]], [m[key]], facecolors="none", edgecolors=color, marker=marker, s=60)
    for ax, what in zip(axes, ("p50", "p99")):
        ax.set_yscale("log")
        ax.set_xlabel("offered load, requests/s")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(f"{what} latency, ms")
        ax.set_title(f"{what} latency against offered load")
        ax.grid(True, which="both", alpha=0.3)
        if base:
            ax.axvline(HALF * base, color="grey", lw=6, alpha=0.15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 0.03))
    fig.text(0.5, 0.005, "lines: fixed offered loads (wrk paced); hollow marker on a dotted line: the design at "
             "its max throughput; x: the design could not be offered that load or left a Kafka backlog; grey band: "
             "half the ceiling's "
             "throughput",
             ha="center", fontsize=7.5, color="dimgrey")
    meta = results["meta"]
    fig.suptitle(f"POST /protected, one process on one core, wrk on the other - {meta.get('date')} - "
                 f"load avg at start {meta.get('load_start', '').split('load average:')[-1].strip()}", fontsize=9)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown(results))
    (out / "README-summary.md").write_text(summary_block(results))
    plot(results, out / "latency.png")
