"""The operator CLI: ``table dump``/``table top`` read Kafka with no worker running, ``inspect`` asks a worker.

Pure parts (decoding a snapshot, ranking, key splitting) are tested on
hand-built records; the commands run as the real console command against the
real broker, as an operator would run them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaProducer

from bucketstream import crdt
from bucketstream.inspect import Record, Snapshot, read_changelog, split_key, table, top
from bucketstream.rules import Policy, Rules
from tests.cluster import WorkerPool, free_port, wait_until

broker = pytest.mark.broker
RULES = Rules(Policy.build("default", 5, 0.01))
V = RULES.default.version


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETSTREAM_")}
    return subprocess.run([sys.executable, "-m", "bucketstream.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok_json(*args: str) -> dict:
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- pure: what a snapshot means ---------------------------------------------------------

def rec(state_or_bytes, partition: int = 0) -> Record:
    value = state_or_bytes if isinstance(state_or_bytes, bytes) else crdt.encode(state_or_bytes)
    return Record(value, partition, 0, 0.0)


def test_snapshot_rows_carry_tokens_only_under_the_rule_that_made_the_key():
    """A state means nothing without its rule: a key of an unknown rule version gets no tokens."""
    t0 = crdt.DEFAULT_EPOCH + 1000  # long after the epoch: a fresh bucket is full
    snap = Snapshot("t", 8, {
        f"{V}||alice".encode(): rec(crdt.BucketState({1: 3})),
        b"00000000||bob": rec(crdt.BucketState({1: 1})),
    })
    alice, bob = sorted(table(snap, RULES, t0).rows, key=lambda r: r.user)
    assert (alice.user, alice.resource, alice.policy, alice.tokens) == ("alice", None, "default", 5.0)
    assert bob.policy is None and bob.tokens is None and bob.state.consumed == 1


def test_malformed_values_are_collected_not_raised():
    snap = Snapshot("t", 8, {b"junk": rec(b"\x00nope"), b"empty": rec(b""),
                             f"{V}||ok".encode(): rec(crdt.BOTTOM)})
    t = table(snap, RULES, crdt.DEFAULT_EPOCH)
    assert [r.user for r in t.rows] == ["ok"]
    assert {m.key: m.error.split(":")[0] for m in t.malformed} == {
        b"empty": "empty input", b"junk": "unknown type/version byte 0x00 (expected 0xb1"}


def test_top_ranks_by_consumption_or_by_fewest_tokens():
    now = crdt.DEFAULT_EPOCH  # no refill yet: tokens = 5 - consumed
    snap = Snapshot("t", 8, {f"{V}||u{n}".encode(): rec(crdt.BucketState({7: n})) for n in (1, 4, 2)}
                    | {b"00000000||other": rec(crdt.BucketState({7: 9}))})
    rows = table(snap, RULES, now).rows
    assert [r.user for r in top(rows, 2)] == ["other", "u4"]
    assert [(r.user, r.tokens) for r in top(rows, 2, by="tokens")] == [("u4", 1.0), ("u2", 3.0)]


def test_split_key_reads_the_keys_that_dump_prints():
    assert split_key(f"{V}||alice") == ("alice", None)
    assert split_key(f"{V}|search|a|b") == ("a|b", "search")
    assert split_key("alice") is None and split_key("x||alice") is None


# -- against Kafka, with no worker running -----------------------------------------------

@pytest.fixture(scope="module")
def stopped_table(broker, tmp_path_factory):
    """A worker spends tokens for three buckets and stops; then the changelog gets a
    malformed value and a deleted key. Only Kafka holds the table afterwards."""
    # hold_share 0: every admission published, so that the table holds all three buckets
    pool = WorkerPool(broker, tmp_path_factory.mktemp("cli-table"), capacity=5, rate=0.01, hold_share=0)
    try:
        (w,) = pool.start(1)
        spent = {("alice", None): 6, ("bob", None): 2, ("carol", "search"): 1}  # alice: 5 allowed, 1 refused
        for (user, resource), n in spent.items():
            for _ in range(n):
                w.protected(user, f"/protected/{resource}" if resource else "/protected")
        key = {u: w.request("GET", f"/buckets/{u}" + (f"?resource={r}" if r else ""))[2] for u, r in spent}
        key = {u: json.loads(body)["key"] for u, body in key.items()}
        topic = f"{pool.app_id}-buckets-changelog"
        want = {key["alice"]: 5, key["bob"]: 2, key["carol"]: 1}

        def in_kafka():
            snap = asyncio.run(read_changelog({"bootstrap_servers": [broker.bootstrap]}, topic, pool.app_id, 10))
            return all(k.encode() in snap.records and crdt.decode(snap.records[k.encode()].value).consumed == n
                       for k, n in want.items())
        wait_until(in_kafka, 30, 0.2, "the changelog in Kafka holds all three buckets")
    finally:
        pool.stop_all()
    assert not any(w.alive for w in pool.workers)

    async def vandalise():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"\x00garbage", key=b"junk", partition=0)
            await producer.send_and_wait(topic, crdt.encode(crdt.BucketState({1: 1})), key=b"gone", partition=1)
            await producer.send_and_wait(topic, None, key=b"gone", partition=1)  # tombstone
        finally:
            await producer.stop()
    asyncio.run(vandalise())
    return {"app_id": pool.app_id, "broker": broker.url, "topic": topic, "key": key}


def table_args(t: dict, *more: str) -> list[str]:
    return ["--broker", t["broker"], "--app-id", t["app_id"], "--capacity", "5", "--rate", "0.01", *more]


@broker
def test_dump_reads_every_bucket_from_kafka_with_no_worker(stopped_table):
    t = stopped_table
    doc = ok_json("table", "dump", *table_args(t))
    assert (doc["topic"], doc["app_id"], doc["partitions"], doc["total"]) == (t["topic"], t["app_id"], 8, 3)
    got = {b["key"]: b for b in doc["buckets"]}
    assert set(got) == set(t["key"].values())  # the tombstoned key is gone, the malformed one listed apart
    alice, bob, carol = (got[t["key"][u]] for u in ("alice", "bob", "carol"))
    assert (alice["consumed"], bob["consumed"], carol["consumed"]) == (5, 2, 1)
    assert alice["tokens"] == pytest.approx(0, abs=0.5) and bob["tokens"] == pytest.approx(3, abs=0.5)
    assert (carol["user"], carol["resource"], carol["policy"], carol["capacity"]) == ("carol", "search", "default", 5)
    assert len(alice["counters"]) == 1 and sum(alice["counters"].values()) == 5
    assert [(m["key"], m["partition"]) for m in doc["malformed"]] == [("junk", 0)]
    assert "unknown type/version byte 0x00" in doc["malformed"][0]["error"]


@broker
def test_dump_text_lists_buckets_and_reports_malformed_values(stopped_table):
    t = stopped_table
    proc = cli("table", "dump", *table_args(t, "--limit", "2"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["KEY", "POLICY", "CONSUMED", "TOKENS", "NODES", "PARTITION", "UPDATED"]
    assert len([ln for ln in lines if "|" in ln]) == 2
    assert f"2 of 3 bucket(s) in {t['topic']}" in proc.stdout
    assert "1 malformed value(s)" in proc.stdout and "b'junk' partition 0" in proc.stdout


@broker
def test_dump_without_the_rule_shows_no_tokens(stopped_table):
    """Default capacity/rate (10, 1) are not the rule that made these keys: tokens unknown, not wrong."""
    t = stopped_table
    doc = ok_json("table", "dump", "--broker", t["broker"], "--app-id", t["app_id"])
    assert doc["total"] == 3 and all(b["tokens"] is None and b["policy"] is None for b in doc["buckets"])
    proc = cli("table", "dump", "--broker", t["broker"], "--app-id", t["app_id"])
    assert "3 bucket(s) were made under rules not given here" in proc.stdout


@broker
def test_top_ranks_buckets_by_consumption_and_by_tokens(stopped_table):
    t = stopped_table
    doc = ok_json("table", "top", *table_args(t, "--limit", "2"))
    assert [b["key"] for b in doc["buckets"]] == [t["key"]["alice"], t["key"]["bob"]] and doc["by"] == "consumed"
    doc = ok_json("table", "top", *table_args(t, "--by", "tokens", "-n", "1"))
    assert [b["key"] for b in doc["buckets"]] == [t["key"]["alice"]]
    proc = cli("table", "top", *table_args(t))
    assert proc.returncode == 0 and "top 3 by consumed of 3 bucket(s)" in proc.stdout


@broker
def test_unknown_app_id_names_the_topic_and_the_app_ids_there(stopped_table):
    t = stopped_table
    proc = cli("table", "dump", "--broker", t["broker"], "--app-id", "no-such-app")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no topic no-such-app-buckets-changelog" in proc.stderr and "'no-such-app'" in proc.stderr
    assert t["app_id"] in proc.stderr  # the ones that do exist
    assert len(proc.stderr.strip().splitlines()) == 1


def test_broker_down_and_bad_settings_fail_in_one_line():
    proc = cli("table", "top", "--broker", f"kafka://127.0.0.1:{free_port()}", "--timeout", "5")
    assert proc.returncode == 1 and proc.stderr.startswith("Error: cannot reach Kafka at 127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cli("table", "dump", "--app-id", "not an id")
    assert proc.returncode == 2 and "BUCKETSTREAM_APP_ID" in proc.stderr
    proc = cli("table", "dump", "--limits", "/nonexistent/limits.toml")
    assert proc.returncode == 2 and "limits file /nonexistent/limits.toml (BUCKETSTREAM_LIMITS)" in proc.stderr


# -- inspect: asks a running worker ------------------------------------------------------

@broker
def test_inspect_shows_a_bucket_as_the_worker_sees_it(pool):
    (w,) = pool.start(1, capacity=3, rate=0.01)
    url = f"http://127.0.0.1:{w.port}"
    for user, path in [("dave", "/protected"), ("dave", "/protected"), ("eu/42", "/protected/search")]:
        assert w.protected(user, path)[0] == 200
    wait_until(lambda: w.bucket("dave")["replica_consumed"] == 2, 20, 0.05, "the replica shows dave's 2 tokens")

    proc = cli("inspect", "dave", "--worker", url)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "||dave" in out and "user dave, no resource, policy default" in out
    assert "of 3 now" in out and "consumed  2 token(s)" in out and "(this worker)" in out
    assert "partition" in out and "active, ready" in out  # the only worker owns every partition

    by_resource = ok_json("inspect", "eu/42", "-r", "search", "--worker", url)  # a slash in the user id
    assert by_resource["key"].endswith("|search|eu/42") and by_resource["consumed"] == 1
    by_key = ok_json("inspect", by_resource["key"], "--worker", url)  # a key as `table dump` prints it
    assert by_key["key"] == by_resource["key"] and by_key["consumed"] == 1


@broker
def test_inspect_errors_are_one_line_with_exit_codes(pool):
    proc = cli("inspect", "dave", "--worker", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: cannot reach the worker at http://127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1
    (w,) = pool.start(1)
    proc = cli("inspect", "dave", "-r", "not/a/resource", "--worker", f"http://127.0.0.1:{w.port}")
    assert proc.returncode == 2 and "answered 400: resource name must be" in proc.stderr
