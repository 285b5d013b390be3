#!/usr/bin/env bash
# A three-node Apache Kafka cluster (KRaft, every node broker + controller) on
# 127.0.0.1, each node run by kafka.sh from the same Maven Central jars.
#
#   cluster.sh start        start the nodes that do not answer yet, all at once
#                           (a KRaft quorum needs a majority up to elect a
#                           leader); return once every node answers
#   cluster.sh stop         stop every node (in parallel)
#   cluster.sh kill         kill -9 every node (throwaway clusters: no 5-15 s
#                           controlled shutdown of a quorum that is going away)
#   cluster.sh status       one line per node; fails unless all answer
#   cluster.sh url          the broker list for BUCKETSTREAM_BROKER
#   cluster.sh start-node N / stop-node N / kill-node N
#                           one node (N = 1..3); kill-node is kill -9
#
# Settings (environment):
#   KAFKA_CLUSTER_PORTS      "19092 19094 19096": client ports, one per node;
#                            node i's controller listens on port+1
#   KAFKA_CLUSTER_STATE_DIR  .run/kafka-cluster (node-1, node-2, ... below it)
#   KAFKA_CLUSTER_ID         one id every node shares (default: a fixed one)
#   KAFKA_HEAP               384m per node
#   KAFKA_REPLICATION        min(3, nodes): internal topics, default for others
#   KAFKA_MIN_ISR            min(2, KAFKA_REPLICATION)
#   KAFKA_PROPERTIES         "broker.session.timeout.ms=3000 broker.heartbeat.interval.ms=500":
#                            a dead node is fenced (and leaves every ISR) after
#                            3 s, not Kafka's 9 s. Until then a partition it
#                            follows takes no acks=all write and its high
#                            watermark stands still, so no worker sees another's
#                            spending; set it to "" for Kafka's defaults
#   anything else kafka.sh reads (KAFKA_VERSION, KAFKA_CACHE, ...) applies to every node
#
# The app's topics get their replication factor from BUCKETSTREAM_TOPIC_REPLICATION
# (3 here) and min.insync.replicas = min(2, that) from the worker itself.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a ports <<< "${KAFKA_CLUSTER_PORTS:-19092 19094 19096}"
n=${#ports[@]}
root=${KAFKA_CLUSTER_STATE_DIR:-$PWD/.run/kafka-cluster}
export KAFKA_CLUSTER_ID=${KAFKA_CLUSTER_ID:-bUcKeTsTrEaMcLuStErKaF}
export KAFKA_HEAP=${KAFKA_HEAP:-384m}
export KAFKA_REPLICATION=${KAFKA_REPLICATION:-$(( n < 3 ? n : 3 ))}
export KAFKA_PROPERTIES=${KAFKA_PROPERTIES-broker.session.timeout.ms=3000 broker.heartbeat.interval.ms=500}

die() { echo "cluster.sh: $*" >&2; exit 1; }

[ "$n" -ge 1 ] || die "KAFKA_CLUSTER_PORTS lists no port"
voters=""
for i in "${!ports[@]}"; do
  voters+="${voters:+,}$((i + 1))@127.0.0.1:$((ports[i] + 1))"
done

node() {  # node N CMD: kafka.sh CMD for node N
  local i=$(($1 - 1))
  [ "$i" -ge 0 ] && [ "$i" -lt "$n" ] || die "no node $1 (nodes 1..$n)"
  KAFKA_PORT=${ports[i]} KAFKA_CONTROLLER_PORT=$((ports[i] + 1)) KAFKA_NODE_ID=$1 \
    KAFKA_VOTERS=$voters KAFKA_STATE_DIR=$root/node-$1 "$here/kafka.sh" "$2"
}

all() {  # all CMD [N...]: kafka.sh CMD on these nodes (default: every node) at once; fails if any failed
  local cmd=$1 pids=() failed=0 i j; shift
  local nodes=("$@"); [ ${#nodes[@]} -gt 0 ] || nodes=($(seq "$n"))
  if [ "$cmd" != start ] && [ ! -d "$root" ]; then echo "cluster.sh: no cluster started from $root"; return 0; fi
  mkdir -p "$root"
  for i in "${nodes[@]}"; do
    node "$i" "$cmd" >"$root/node-$i.$cmd.out" 2>&1 &
    pids+=($!)
  done
  for j in "${!nodes[@]}"; do
    i=${nodes[j]}
    if wait "${pids[j]}"; then cat "$root/node-$i.$cmd.out"
    else failed=1; echo "cluster.sh: node $i: $cmd failed:" >&2; cat "$root/node-$i.$cmd.out" >&2; fi
  done
  return "$failed"
}

start() {
  "$here/kafka.sh" jars >/dev/null  # once, not three downloads racing
  local down=() i
  for i in $(seq "$n"); do node "$i" status >/dev/null 2>&1 || down+=("$i"); done
  if [ ${#down[@]} -gt 0 ] && ! all start "${down[@]}"; then
    all stop "${down[@]}" >/dev/null 2>&1 || true  # only what this call started
    die "the cluster did not come up (logs in $root/node-*/)"
  fi
  status >/dev/null || die "not every node answers (logs in $root/node-*/)"
  echo "cluster.sh: $n KRaft nodes answer; BUCKETSTREAM_BROKER=$(url)"
}

status() {
  local failed=0 i
  for i in $(seq "$n"); do
    echo -n "node $i: "; node "$i" status || failed=1
  done
  return "$failed"
}

url() {
  local list="" p
  for p in "${ports[@]}"; do list+="${list:+;}127.0.0.1:$p"; done
  echo "kafka://$list"
}

case "${1:-}" in
  start) start ;;
  stop) all stop ;;
  kill) all kill ;;
  status) status ;;
  url) url ;;
  start-node) node "${2:?node number}" start ;;
  stop-node) node "${2:?node number}" stop ;;
  kill-node) node "${2:?node number}" kill ;;
  *) echo "usage: $0 start|stop|kill|status|url|start-node N|stop-node N|kill-node N" >&2; exit 2 ;;
esac
