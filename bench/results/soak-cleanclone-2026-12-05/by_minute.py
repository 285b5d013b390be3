"""Probe (not part of make bench): each kept soak report's runs as ratios, last minute over first (p99, CPU per request, yardstick) and CPU per request in yardstick units by minute.

Run from the repository's root: python bench/results/soak-cleanclone-2026-12-05/by_minute.py
"""
import glob
import re

for f in sorted(glob.glob("bench/results/*/results.md")) + ["bench/results/results.md"]:
    txt = open(f).read()
    runs = re.finditer(r"### (\d) worker\(s\), (unique|skewed) users[^\n]*\n\n(\|[^\n]*\n)\|[-|]*\n((?:\|[^\n]*\n)+)", txt)
    for m in runs:
        hdr = [h.strip() for h in m.group(3).split("|")]
        if "yardstick µs" not in hdr:  # reports from before the yardstick (2026-12-04 21:12)
            continue
        col = {k: hdr.index(k) for k in ("CPU µs/req", "yardstick µs", "p99 ms", "core wait ms/s (steal)")}
        rows = [[c.strip() for c in r.split("|")] for r in m.group(4).strip().split("\n")]
        num = lambda k, r: float(r[col[k]].split()[0].replace(",", ""))  # noqa: E731
        cpu, stick, p99, wait = ([num(k, r) for r in rows] for k in col)
        units = " ".join(f"{1000 * c / y:.1f}" for c, y in zip(cpu, stick))
        print(f"{f.split('/')[2][:34]:34} {m.group(1)}w {m.group(2):6} p99 {p99[-1] / p99[0]:.2f} "
              f"cpu {cpu[-1] / cpu[0]:.2f} yardstick {stick[-1] / stick[0]:.2f} "
              f"cpu/yardstick by minute {units}  core wait {wait[0]:.0f} -> {wait[-1]:.0f} ms/s")
