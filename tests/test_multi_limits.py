"""Several limits on one request (#18): all or nothing, the refusing limit named, every policy listed.

The decision (``Limiter.decide_all``) is pure and checked with hypothesis
against serialized textbook buckets; the limits file and the rule history
without a broker; the HTTP answers through a real worker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bucketstream import crdt, web
from bucketstream.crdt import DEFAULT_EPOCH, Decision, Rule, exact, tokens
from bucketstream.local import Limiter
from bucketstream.rules import Policy, Rules
from bucketstream.settings import ConfigError
from tests.cluster import wait_until

US = 1_000_000


def at(ticks: int) -> float:
    return DEFAULT_EPOCH + ticks / US


# -- strategies ------------------------------------------------------------------------

LimitRules = st.builds(Rule, capacity=st.integers(1, 20), rate=st.one_of(st.integers(1, 50), st.fractions(
    Fraction(1, 10), 50, max_denominator=12)))
#: Gaps between requests, µs: often none, sometimes enough to refill.
Gaps = st.one_of(st.just(0), st.integers(0, 50_000), st.integers(0, 3 * US))
Requests = st.lists(st.tuples(Gaps, st.integers(1, 6)), min_size=1, max_size=40)


# -- pure: the decision -------------------------------------------------------------------


@given(st.lists(LimitRules, min_size=1, max_size=3), Requests)
def test_several_limits_decide_exactly_like_serialized_buckets_all_or_nothing(rules, requests):
    """Admitted iff every textbook bucket has ``cost``; then every one is charged, else none."""
    limiter = Limiter(1, lambda key: None)
    keys = [f"k{i}".encode() for i in range(len(rules))]
    levels = [exact(r.capacity) for r in rules]
    t = last = 0
    for gap, cost in requests:
        t += gap
        levels = [min(exact(r.capacity), level + exact(r.rate) * (t - last) / US) for r, level in zip(rules, levels)]
        last = t
        before = [limiter.view(k).consumed for k in keys]
        refused, decisions = limiter.decide_all(keys, rules, at(t), cost)
        admit = all(level >= cost for level in levels)
        assert (refused < 0) == admit
        if admit:
            levels = [level - cost for level in levels]
        else:
            assert refused == next(i for i, level in enumerate(levels) if level < cost)
        after = [limiter.view(k).consumed for k in keys]
        # never one without the other
        assert after == [b + cost for b in before] if admit else after == before
        for k, r, level in zip(keys, rules, levels):
            assert tokens(limiter.view(k), r, at(t)) == float(level)


@given(st.lists(LimitRules, min_size=2, max_size=3), Requests)
def test_retry_after_of_a_refusal_is_when_every_limit_admits(rules, requests):
    """The longest of the limits' waits: at that time the same request is admitted, a µs before not."""
    limiter = Limiter(1, lambda key: None)
    keys = [f"k{i}".encode() for i in range(len(rules))]
    t = 0
    for gap, cost in requests:
        t += gap
        cost = min(cost, min(int(r.capacity) for r in rules))
        refused, decisions = limiter.decide_all(keys, rules, at(t), cost)
        if refused >= 0:
            wait = max(d.retry_after for d in decisions)
            states = {k: crdt.encode(limiter.view(k)) for k in keys}
            # copies of the views: a probe's charges stay its own
            assert Limiter(1, states.get).decide_all(keys, rules, at(t) + wait, cost)[0] < 0
            assert Limiter(1, states.get).decide_all(keys, rules, at(t) + wait - 1e-6, cost)[0] >= 0


@given(st.lists(LimitRules, min_size=2, max_size=2),
       st.lists(st.tuples(st.integers(0, 1), st.booleans(), st.integers(0, 1), Gaps, st.integers(1, 4)),
                max_size=40))
def test_replicated_separately_two_limits_are_still_never_charged_one_without_the_other(rules, ops):
    """Two workers decide and hear each other's states key by key, in any order (each limit is
    its own CRDT): whatever a view shows in between, every worker's slot holds the same count
    on both limits, in each worker's view once it has heard everything, and in the join."""
    workers = [Limiter(slot, lambda key: None) for slot in (11, 22)]
    keys = [b"second", b"day"]
    t = 0
    for who, hear, which, gap, cost in ops:
        t += gap
        if hear:  # the other worker's whole state of one key arrives here
            workers[who].on_peer_state(keys[which], workers[1 - who].view(keys[which]), at(t))
        else:
            workers[who].decide_all(keys, rules, at(t), cost)
    for w in workers:
        for other in workers:
            for key in keys:
                w.on_peer_state(key, other.view(key), at(t))
        first, second = (w.view(k).counters for k in keys)
        assert dict(first) == dict(second)
    assert workers[0].view(keys[0]) == workers[1].view(keys[0])


@given(Requests)
def test_a_shadow_limit_that_refuses_blocks_nothing_and_is_not_charged(requests):
    rules = [Rule(5, 1), Rule(2, Fraction(1, 10))]
    limiter = Limiter(1, lambda key: None)
    keys = [b"real", b"shadow"]
    t = 0
    for gap, cost in requests:
        t += gap
        cost = min(cost, 2)
        real_ok = crdt.retry_after(limiter.view(b"real"), rules[0], at(t), cost) == 0
        shadow_before = limiter.view(b"shadow")
        refused, decisions = limiter.decide_all(keys, rules, at(t), cost, shadow=[False, True])
        assert (refused < 0) == real_ok
        if not decisions[1].allowed:
            assert limiter.view(b"shadow") == shadow_before


def test_a_refusal_names_the_limit_lists_every_policy_and_waits_for_all():
    second = Policy.build("default:second", 10, 10, named=True)
    day = Policy.build("default:day", 6, Fraction(1, 3600), named=True)
    resp = web.decisions_response([Decision(True, 5.5, 0.0), Decision(False, 0.2, 2880.0)],
                                  second.with_also((day,)), 1)
    assert resp.status == 429 and resp.headers["Retry-After"] == "2880"
    assert resp.headers["RateLimit-Policy"] == '"default:second";q=10;w=1, "default:day";q=6;w=21600'
    assert resp.headers["RateLimit"] == '"default:second";r=5;t=1, "default:day";r=0;t=20880'
    body = json.loads(resp.body)
    assert body["allowed"] is False and body["refused_by"] == "default:day" and body["policy"] == "default:day"
    assert body["retry_after"] == 2880
    assert [(x["policy"], x["allowed"], x["remaining"]) for x in body["limits"]] == [
        ("default:second", True, 5), ("default:day", False, 0)]


# -- pure: the limits file and the history ------------------------------------------------

MULTI = textwrap.dedent("""
    [default]
    limits = [
      { name = "second", capacity = 10, rate = 10 },
      { name = "day", capacity = 6, rate = 0.0001 },
    ]

    [resources.upload]
    limits = [
      { name = "burst", capacity = 3, rate = 0.01 },
      { name = "day", capacity = 1, rate = 0.0001, shadow = true },
    ]

    [resources.twins]            # two limits with the same numbers are still two buckets
    [[resources.twins.limits]]
    name = "a"
    capacity = 5
    rate = 1
    [[resources.twins.limits]]
    name = "b"
    capacity = 5
    rate = 1
""")


def rules_of(tmp_path, text: str) -> Rules:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return Rules.load(path)


def test_a_rule_may_list_limits_each_its_own_bucket(tmp_path):
    rules = rules_of(tmp_path, MULTI)
    p = rules.policy("bob", None)
    assert [x.name for x in p.limits] == ["default:second", "default:day"]
    twins = rules.policy("bob", "twins").limits
    keys = {Rules.key(x, "bob", "twins") for x in twins}
    assert len(keys) == 2
    assert [x.shadow for x in rules.policy("bob", "upload").limits] == [False, True]
    assert {x.name for x in rules.all_policies()} >= {"default:day", "upload:day", "twins:a", "twins:b"}
    for x in rules.all_policies():
        assert rules.policy_for_key(Rules.key(x, "bob", None)).name == x.name  # the CLI names each limit


@pytest.mark.parametrize("text, problem", [
    ("[default]\nlimits = []\n", "limits must not be empty"),
    ("[default]\ncapacity = 1\nrate = 1\nlimits = [{name='a', capacity=1, rate=1}]\n", "not both"),
    ("[default]\nlimits = [{name='a', capacity=1, rate=1}, {name='a', capacity=2, rate=1}]\n", "distinct"),
    ("[default]\nlimits = [{name='a b', capacity=1, rate=1}]\n", "limit name"),
    ("[default]\nlimits = [{name='a', capacity=0, rate=1}]\n", "greater than 0"),
    ("[default]\nlimits = [{name='a', capacity=1}]\n", "rate"),
    ("[default]\nrate = 1\n", "default.capacity"),
])
def test_bad_limit_lists_are_refused_at_start_up(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem):
        rules_of(tmp_path, text)


def test_a_changed_limit_in_a_list_carries_its_own_level_over(tmp_path):
    v1 = rules_of(tmp_path, MULTI)
    v2 = rules_of(tmp_path, MULTI.replace('name = "day", capacity = 6', 'name = "day", capacity = 8'))
    recorded: dict[str, list[dict]] = {}
    for i, rules in enumerate([v1, v2]):
        recorded.update(rules.versions_to_record(recorded, 1000.0 + i))
    v2.adopt_history(recorded)
    new_day = v2.policy("bob", None).also[0]
    old_key, old, new, _ = v2.predecessor(Rules.key(new_day, "bob", None))
    assert old_key == Rules.key(v1.policy("bob", None).also[0], "bob", None)
    assert (old.name, old.rule.capacity, new.rule.capacity) == ("default:day", 6, 8)
    # the unchanged per-second limit keeps its key
    assert Rules.key(v2.policy("bob", None), "bob", None) == Rules.key(v1.policy("bob", None), "bob", None)


# -- real worker ------------------------------------------------------------------------


@pytest.mark.broker
def test_a_burst_within_the_second_limit_is_refused_by_the_daily_one_and_charges_neither(pool, tmp_path):
    path = tmp_path / "limits.toml"
    path.write_text(MULTI)
    (w,) = pool.start(1, limits=path)
    answers = [w.request("POST", "/protected", {"X-User-ID": "zoe"}) for _ in range(7)]
    assert [a[0] for a in answers] == [200] * 6 + [429]
    status, headers, raw = answers[-1]
    body = json.loads(raw)
    assert body["refused_by"] == "default:day" and body["allowed"] is False
    assert [(x["policy"], x["allowed"]) for x in body["limits"]] == [("default:second", True), ("default:day", False)]
    assert headers["RateLimit-Policy"] == '"default:second";q=10;w=1, "default:day";q=6;w=60000'
    assert headers["RateLimit"].startswith('"default:second";r=') and ', "default:day";r=0;t=' in headers["RateLimit"]
    assert int(headers["Retry-After"]) == body["retry_after"] > 9000  # one token at 0.0001/s
    # the refused request charged neither limit: 6 spent from each
    limits = json.loads(w.request("GET", "/limits/zoe")[2])["limits"]
    assert [x["policy"] for x in limits] == ["default:second", "default:day"]
    assert w.bucket("zoe")["consumed"] == 6 and limits[1]["remaining"] == 0
    # a cost beyond the smaller capacity is a 400 naming it
    status, _, raw = w.request("POST", "/protected", {"X-User-ID": "yan", "X-Cost": "7"})
    assert (status, json.loads(raw)) == (
        400, {"error": "X-Cost 7 is more than policy 'default:day' can ever grant (capacity 6)"})
    # shadow per limit: the shadow daily limit would refuse, the burst limit decides
    statuses = []
    for _ in range(4):
        status, _, raw = w.request("POST", "/protected/upload", {"X-User-ID": "zoe"})
        statuses.append((status, json.loads(raw).get("shadow_refused_by"), json.loads(raw).get("refused_by")))
    assert statuses == [(200, None, None), (200, ["upload:day"], None), (200, ["upload:day"], None),
                        (429, None, "upload:burst")]
    # a report charges every limit, once
    status, _, raw = w.request("POST", "/report", {"X-User-ID": "xia", "X-Cost": "2", "X-Report-ID": "r"})
    body = json.loads(raw)
    assert status == 200 and [x["remaining"] for x in body["limits"]] == [8, 4] and body["policy"] == "default:day"
    # the inspection shows each limit's bucket
    day = w.bucket("zoe?limit=day")
    assert day["policy"] == "default:day" and day["limits"] == ["default:second", "default:day"]
    assert day["consumed"] == 6 and day["capacity"] == 6
    status, _, raw = w.request("GET", "/buckets/zoe?limit=week")
    assert (status, json.loads(raw)) == (400, {"error": "policy 'default:second' has no limit 'week' "
                                                        "(it has: default:second, default:day)"})
    proc = subprocess.run([sys.executable, "-m", "bucketstream.cli", "inspect", "zoe", "--limit", "day", "--worker",
                           f"http://127.0.0.1:{w.port}"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("BUCKETSTREAM_")})
    assert proc.returncode == 0, proc.stderr
    assert "policy default:day; limits default:second, default:day (--limit)" in proc.stdout
    assert "tokens    0 of 6" in proc.stdout
    metrics = w.request("GET", "/metrics")[2].decode()
    assert 'bucketstream_decisions_total{outcome="refused",policy="default:day",protocol="http"} 1.0' in metrics
    assert 'bucketstream_decisions_total{outcome="not_charged",policy="default:second",protocol="http"} 1.0' in metrics


@given(st.lists(st.tuples(st.booleans(), st.floats(-50, 50), st.floats(0, 1e5)), min_size=2, max_size=3),
       st.lists(st.booleans(), min_size=3, max_size=3))
def test_several_limits_bodies_are_exactly_the_json_of_their_fields(answers, shadow):
    """The body is built from fragments encoded once per rule; it must equal json.dumps of the fields."""
    limits = [Policy.build(f'r:{i}"ü', 10 + i, 0.5 + i, shadow[i], named=True) for i in range(len(answers))]
    policy = limits[0].with_also(tuple(limits[1:]))
    decisions = [Decision(ok, left, 0.0 if ok else wait) for ok, left, wait in answers]
    refused = next((i for i, d in enumerate(decisions) if not d.allowed and not shadow[i]), -1)
    resp = web.decisions_response(decisions, policy, refused)
    entries = [{"policy": p.name, "allowed": d.allowed, "remaining": max(0, math.floor(d.remaining)),
                "limit": p.rule.capacity, "reset": max(0, math.ceil((p.rule.capacity - d.remaining) / p.rule.rate))}
               for p, d in zip(limits, decisions)]
    about = refused if refused >= 0 else min(range(len(decisions)), key=lambda i: decisions[i].remaining)
    body = {"allowed": refused < 0, **{k: entries[about][k] for k in ("remaining", "limit", "reset", "policy")}}
    if refused >= 0:
        body["refused_by"] = limits[refused].name
        body["retry_after"] = max(1, math.ceil(max(d.retry_after for d, p in zip(decisions, limits) if not p.shadow)
                                               if any(not p.shadow for p in limits) else 0))
        assert resp.status == 429 and resp.headers["Retry-After"] == str(body["retry_after"])
    elif any(p.shadow and not d.allowed for p, d in zip(limits, decisions)):
        body["shadow"] = "would refuse"
        body["shadow_refused_by"] = [p.name for p, d in zip(limits, decisions) if not d.allowed]
    body["limits"] = entries
    assert resp.body == json.dumps(body).encode()
    assert resp.headers["RateLimit-Policy"] == ", ".join(
        f'"{p.name}";q={p.rule.capacity};w={math.ceil(p.rule.capacity / p.rule.rate)}' for p in limits)


@pytest.mark.broker
def test_a_rule_change_carries_each_limits_level_over(pool, tmp_path):
    """Spend 5 of a rule's two limits, raise the daily limit's capacity, restart: the daily
    limit keeps its level (1 of 6 left becomes 1 of 8, not 8), the other keeps its bucket."""
    text = textwrap.dedent("""
        [default]
        limits = [
          { name = "minute", capacity = 10, rate = 0.01 },
          { name = "day", capacity = 6, rate = 0.0001 },
        ]
    """)
    path = tmp_path / "limits.toml"
    path.write_text(text)
    (w,) = pool.start(1, limits=path)
    for _ in range(5):
        assert w.request("POST", "/protected", {"X-User-ID": "bob"})[0] == 200
    path.write_text(text.replace("capacity = 6", "capacity = 8"))
    w = pool.restart(w).wait_ready()
    # as test_rule_change: the old bucket's last state may reach the restarted worker after its
    # first read of the new one; the carry-over is redone then, within seconds
    wait_until(lambda: w.bucket("bob?limit=day")["tokens"] < 2, 10, 0.1, "bob's daily level carried over")
    status, _, raw = w.request("POST", "/protected", {"X-User-ID": "bob"})
    body = json.loads(raw)
    assert status == 200 and [(x["policy"], x["remaining"], x["limit"]) for x in body["limits"]] == [
        ("default:minute", 4, 10), ("default:day", 0, 8)], body
    status, _, raw = w.request("POST", "/protected", {"X-User-ID": "bob"})
    assert status == 429 and json.loads(raw)["refused_by"] == "default:day"
