import collections, glob, re, sys
def load(kind):
    incl = collections.Counter(); total = 0; self_ = collections.Counter()
    for f in glob.glob(f"/tmp/prof/{kind}-*.txt"):
        for line in open(f):
            line = line.rstrip()
            if not line: continue
            stack, _, n = line.rpartition(" ")
            n = int(n); total += n
            frames = stack.split(";")
            seen = set()
            for fr in frames:
                name = re.sub(r" \(.*?:\d+\)", lambda m: " (" + m.group(0).split("/")[-1].split(":")[0].rstrip(")") , fr)
                name = re.sub(r":\d+\)$", ")", fr)
                if name not in seen:
                    incl[name] += n; seen.add(name)
            self_[re.sub(r":\d+\)$", ")", frames[-1])] += n
    return total, incl, self_
te, ie, se = load("early"); tl, il, sl = load("late")
print("samples early", te, "late", tl, "ratio", tl / te)
keys = set(ie) | set(il)
rows = sorted(keys, key=lambda k: il[k] - ie[k], reverse=True)
print("inclusive, biggest growth")
for k in rows[:40]:
    print(f"{ie[k]:7d} {il[k]:7d} {il[k]-ie[k]:+7d}  {k[:150]}")
print("self, biggest growth")
for k in sorted(set(se)|set(sl), key=lambda k: sl[k]-se[k], reverse=True)[:25]:
    print(f"{se[k]:7d} {sl[k]:7d} {sl[k]-se[k]:+7d}  {k[:150]}")
