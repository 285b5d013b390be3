import re, statistics, sys, glob
for label in ("new", "adapt", "old"):
    rs = []
    for f in sorted(glob.glob(f"ph-{label}*/README-summary.md")):
        line = next(l for l in open(f) if "unique-user max" in l)
        pairs = re.findall(r"([\d,]+) / ([\d,]+)", line)
        r = [int(u.replace(",", "")) / int(h.replace(",", "")) for u, h in pairs]
        print(f.split("/")[0], " ".join(f"{x:.3f}" for x in r))
        rs += r
    print(label, len(rs), "pairs, median %.3f, range %.3f-%.3f" % (statistics.median(rs), min(rs), max(rs)))
