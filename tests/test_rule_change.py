"""Changing a rule never hands out a fresh burst.

The history of rule versions is pure bookkeeping (tested without a broker);
the carry-over itself goes through real workers restarted with a changed
limits file on the real broker, the way an operator rolls out a new limit.
"""

from __future__ import annotations

import textwrap

import pytest

from bucketstream.rules import HISTORY_LENGTH, Rules
from tests.cluster import wait_until

V1 = textwrap.dedent("""
    [default]
    capacity = 10
    rate = 0.02

    [resources.search]
    capacity = 5
    rate = 0.02
""")


def rules_of(tmp_path, text: str, name: str = "limits.toml") -> Rules:
    path = tmp_path / name
    path.write_text(text)
    return Rules.load(path)


def history(*versions_of_rules: Rules, now: float = 1000.0) -> dict[str, list[dict]]:
    """What the rules topic holds after workers started with these rules, in order."""
    recorded: dict[str, list[dict]] = {}
    for i, rules in enumerate(versions_of_rules):
        recorded.update(rules.versions_to_record(recorded, now + i))
    return recorded


# -- pure: the history and the predecessor of a key ------------------------------------------

def test_the_first_start_records_every_rule_once_and_a_restart_records_nothing(tmp_path):
    v1 = rules_of(tmp_path, V1)
    recorded = history(v1)
    assert sorted(recorded) == ["default", "search"]
    assert [v["version"] for v in recorded["default"]] == [v1.default.version]
    assert v1.versions_to_record(recorded, 2000.0) == {}


def test_a_changed_rule_knows_the_key_of_its_previous_version(tmp_path):
    v1 = rules_of(tmp_path, V1)
    v2 = rules_of(tmp_path, V1.replace("capacity = 10", "capacity = 20"))
    v2.adopt_history(history(v1, v2))
    key = Rules.key(v2.default, "bob", None)
    old_key, old, new, replaced = v2.predecessor(key)
    assert old_key == Rules.key(v1.default, "bob", None) and old_key != key
    assert (old.rule.capacity, new.rule.capacity, replaced) == (10, 20, 1001.0)
    # the unchanged rule has no predecessor; old buckets are still evaluated by their own rule
    assert v2.predecessor(Rules.key(v2.resources["search"], "bob", "search")) is None
    assert v2.policy_for_key(old_key).rule.capacity == 10


def test_the_successor_of_an_old_bucket_is_the_same_bucket_under_the_new_version(tmp_path):
    v1 = rules_of(tmp_path, V1)
    v2 = rules_of(tmp_path, V1.replace("capacity = 10", "capacity = 20"))
    v2.adopt_history(history(v1, v2))
    old_key, new_key = Rules.key(v1.default, "bob", None), Rules.key(v2.default, "bob", None)
    succ, old_policy, policy = v2.successor(old_key)
    assert succ == new_key and old_policy.rule.capacity == 10 and policy.rule.capacity == 20
    assert v2.successor(new_key) is None
    assert v2.successor(Rules.key(v2.resources["search"], "bob", "search")) is None  # unchanged rule
    assert v1.successor(old_key) is None  # no history adopted


def test_a_chain_of_changes_and_a_rollback(tmp_path):
    v1 = rules_of(tmp_path, V1)
    v2 = rules_of(tmp_path, V1.replace("capacity = 10", "capacity = 20"))
    v3 = rules_of(tmp_path, V1.replace("capacity = 10", "capacity = 30"))
    recorded = history(v1, v2, v3)
    v3.adopt_history(recorded)
    k3 = Rules.key(v3.default, "bob", None)
    k2, *_ = v3.predecessor(k3)
    k1, *_ = v3.predecessor(k2)
    assert k1 == Rules.key(v1.default, "bob", None) and v3.predecessor(k1) is None
    # back to v1: v1 moves to the end and carries over from v3; no cycle
    back = rules_of(tmp_path, V1)
    recorded = history(v1, v2, v3, back)
    assert [v["version"] for v in recorded["default"]] == [v2.default.version, v3.default.version,
                                                           v1.default.version]
    back.adopt_history(recorded)
    assert back.predecessor(k1)[0] == k3


def test_the_history_is_bounded_and_ignores_entries_it_cannot_rebuild(tmp_path):
    versions = [rules_of(tmp_path, V1.replace("capacity = 10", f"capacity = {10 + i}")) for i in range(12)]
    recorded = history(*versions)
    assert len(recorded["default"]) == HISTORY_LENGTH
    last = versions[-1]
    tampered = {"default": [{"version": "deadbeef", "capacity": 1, "rate": 1, "until": 5.0},
                            {"capacity": "x"}, *recorded["default"][-1:]]}
    last.adopt_history(tampered)
    assert last.predecessor(Rules.key(last.default, "bob", None)) is None


# -- real workers, a real broker ---------------------------------------------------------------

def _limits(tmp_path, text: str):
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return path


def _spend(worker, user: str, n: int, path: str = "/protected") -> None:
    for _ in range(n):
        status, _, body = worker.protected(user, path)
        assert status == 200, body


@pytest.mark.broker
def test_a_rule_change_keeps_each_bucket_level_instead_of_refilling_it(pool, tmp_path):
    """Spend most of a bucket, raise the capacity, restart: the user gets what was
    left (plus the refill since), not the new capacity; a new user gets the new
    capacity; lowering the capacity caps what is left."""
    path = _limits(tmp_path, V1)
    (w,) = pool.start(1, limits=path)
    _spend(w, "bob", 8)
    _spend(w, "carol", 1)
    assert w.protected("bob")[2]["remaining"] == 1  # 10 - 9

    path.write_text(V1.replace("capacity = 10", "capacity = 20"))
    pool.restart(w).wait_ready()
    # no waiting here: a worker is ready only once its peer feed has read the update topic from
    # the merge agents' committed offsets to its end (agents.peer_feed), so its first answer
    # already carries over every state published before it started
    status, headers, body = w.protected("bob")
    assert status == 200, body
    # 1 left (+ a fraction of refill while restarting) - 1; 19 would mean a fresh bucket, or that
    # the spending before the restart was lost on the way down
    assert body["limit"] == 20 and body["remaining"] == 0, body
    assert "q=20" in headers["RateLimit-Policy"]
    assert w.protected("dave")[2]["remaining"] == 19  # a new user: the new, larger bucket
    # the unchanged rule keeps its bucket as it was
    _spend(w, "bob", 5, "/protected/search")
    assert w.protected("bob", "/protected/search")[0] == 429

    path.write_text(V1.replace("capacity = 10", "capacity = 4"))
    pool.restart(w).wait_ready()
    assert w.protected("carol")[2]["remaining"] == 3  # had 9 (or 10), capped at 4, minus one
    # bob spent his last token under v2: the change to v3 gives nothing back
    status, headers, body = w.protected("bob")
    assert status == 429 and body["limit"] == 4 and int(headers["Retry-After"]) >= 1, (status, body)
    bucket = w.bucket("bob")
    assert bucket["capacity"] == 4 and bucket["tokens"] < 1, bucket


@pytest.mark.broker
def test_during_a_rolling_restart_old_version_spending_reaches_the_new_version_bucket(pool, tmp_path):
    """A worker still on v1 keeps spending bob's v1 bucket after a v2 worker has carried
    that bucket over: the v2 worker's bucket follows (the carry-over is redone as the
    old bucket's state arrives), instead of keeping the level it carried at first."""
    old_path = _limits(tmp_path, V1)
    new_path = tmp_path / "limits-v2.toml"
    new_path.write_text(V1.replace("capacity = 10", "capacity = 20"))
    (a,) = pool.start(1, limits=old_path)
    _spend(a, "bob", 2)
    (b,) = pool.start(1, limits=new_path)
    wait_until(lambda: 7 < b.bucket("bob")["tokens"] < 9, 10, 0.1, "v2 worker carries ~8 over")
    _spend(a, "bob", 6)  # v1 bucket: 2 tokens left
    wait_until(lambda: b.bucket("bob")["tokens"] < 3, 10, 0.1, "v2 worker sees the v1 spending")
    assert b.protected("bob")[2]["limit"] == 20
