import sys, timeit, tempfile, os
sys.path.insert(0, "/work/main")
from multidict import CIMultiDict
from bucketstream.settings import Settings
from bucketstream.web import protector, decisions_response, decision_response, _multi
from bucketstream.worker import Worker
from bucketstream.rules import Rules
C = 1_000_000.0
text = (f"[default]\nlimits = [{{ name = \"second\", capacity = {C}, rate = {C} }},"
        f" {{ name = \"day\", capacity = {C * 10}, rate = {C} }}]\n")
path = os.path.join(tempfile.mkdtemp(), "limits.toml"); open(path, "w").write(text)
w = Worker(Settings(limits=path), slot=7)
w.limiter._read_table = lambda k: None
w.tables_recovered = lambda: True; w.mark_peer_feed_ready()
lim = w.limiter
policy = w.rules.policy("hot", None)
m = _multi(policy)
keys = [Rules.key(l, "hot", None) for l in m.limits]
now = w.clock()
def t(f, n=50000):
    return min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6
refused, answers = lim.decide_all(keys, m.rules, now, 1, False, m.shadow)
print("decide_all 2 keys", round(t(lambda: lim.decide_all(keys, m.rules, w.clock(), 1, False, m.shadow)), 2))
print("decide 1 key", round(t(lambda: lim.decide(keys[0], m.rules[0], w.clock(), 1, False)), 2))
print("decisions_response", round(t(lambda: decisions_response(answers, policy, -1)), 2))
print("decision_response", round(t(lambda: decision_response(answers[0], m.limits[0])), 2))
print("keys", round(t(lambda: [Rules.key(l, "hot", None) for l in m.limits]), 2))
print("accepts x2", round(t(lambda: [lim.accepts(k) for k in keys]), 2))
from bucketstream import metrics
print("metrics x2", round(t(lambda: [metrics.decision(l.name, "allowed") for l in m.limits]), 2))
print("decide_all 1 key", round(t(lambda: lim.decide_all(keys[:1], m.rules[:1], w.clock(), 1, False, ())), 2))
print("decide key2", round(t(lambda: lim.decide(keys[1], m.rules[1], w.clock(), 1, False)), 2))
from bucketstream import crdt
for i in (0, 1):
    own = lim._own.get(keys[i]); rep = lim.replica(keys[i])
    v = crdt.join(rep, own) if own is not None else rep
    print(i, "own", own is not None, "dirty", keys[i] in lim._dirty, "held", keys[i] in lim.holds, "deferred", lim.holds.is_deferred(keys[i]),
          "try_consume", round(t(lambda: crdt.try_consume(v, m.rules[i], 7, w.clock(), 1)), 2), "sum", v._sum, "w", v._w.bit_length(),
          "keeps", round(t(lambda: lim.holds.try_hold(keys[i], m.rules[i], w.clock(), 1, 5e5, 1)), 2))
