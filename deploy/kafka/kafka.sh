#!/usr/bin/env bash
# A real Apache Kafka broker in KRaft mode, from Maven Central jars, on the
# installed Java, listening on 127.0.0.1. No Docker, no download site.
#
#   kafka.sh jars     fetch the jars once into the cache; print the directory
#   kafka.sh start    start a broker unless one already answers on the port;
#                     return once it answers
#   kafka.sh stop     stop the broker this state directory started
#   kafka.sh kill     kill -9 it (fault drills: no controlled shutdown)
#   kafka.sh status   say whether it answers
#
# One node of a multi-node cluster is this script with KAFKA_NODE_ID,
# KAFKA_VOTERS (all nodes) and KAFKA_REPLICATION set; deploy/kafka/cluster.sh
# does that for three nodes on 127.0.0.1.
#
# Settings (environment):
#   KAFKA_VERSION          3.9.1 (see "Kafka locally" in docs/maintaining.md)
#   KAFKA_PORT             9092  client listener on 127.0.0.1
#   KAFKA_CONTROLLER_PORT  KAFKA_PORT+1
#   KAFKA_NODE_ID          1
#   KAFKA_VOTERS           1@127.0.0.1:$KAFKA_CONTROLLER_PORT (a cluster lists all)
#   KAFKA_CLUSTER_ID       fixed id; every node of one cluster shares it
#   KAFKA_STATE_DIR        .run/kafka-$KAFKA_PORT (data, log, pid)
#   KAFKA_CACHE            ~/.cache/bucketstream/kafka-$KAFKA_VERSION (jars)
#   KAFKA_HEAP             512m
#   KAFKA_REPLICATION      1     replication factor of the internal topics
#                                (offsets, transactions) and of auto-created ones
#   KAFKA_MIN_ISR          min(2, KAFKA_REPLICATION): min.insync.replicas default
#                                and transaction.state.log.min.isr
#   KAFKA_START_TIMEOUT    90    seconds to wait for "started"
#   KAFKA_PROPERTIES       ""    more server.properties, "key=value" separated by
#                                spaces or newlines; they override the ones above
#                                (e.g. "broker.session.timeout.ms=3000")
#   KAFKA_PROPERTIES_FILE  ""    a file appended to server.properties as is (values with
#                                spaces, e.g. a JAAS line); kafka-secure.sh writes one
#   KAFKA_FORMAT_ARGS      ""    more arguments of the storage format at first start, split
#                                on spaces (e.g. --add-scram 'SCRAM-SHA-256=[name=a,password=b]')
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=${KAFKA_VERSION:-3.9.1}
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
node_id=${KAFKA_NODE_ID:-1}
voters=${KAFKA_VOTERS:-${node_id}@127.0.0.1:${cport}}
cluster_id=${KAFKA_CLUSTER_ID:-bUcKeTsTrEaMlOcAlKaFkA}
state=${KAFKA_STATE_DIR:-$PWD/.run/kafka-$port}
cache=${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bucketstream/kafka-$version}
heap=${KAFKA_HEAP:-512m}
repl=${KAFKA_REPLICATION:-1}
min_isr=${KAFKA_MIN_ISR:-$(( repl < 2 ? repl : 2 ))}
timeout=${KAFKA_START_TIMEOUT:-90}
extra=${KAFKA_PROPERTIES:-}
extra_file=${KAFKA_PROPERTIES_FILE:-}
format_args=${KAFKA_FORMAT_ARGS:-}

die() { echo "kafka.sh: $*" >&2; exit 1; }

need() {
  command -v java >/dev/null 2>&1 || die "java not found: install a JDK 17 or newer (Debian: apt-get install openjdk-17-jre-headless)"
}

jars() {
  if [ -f "$cache/.complete" ]; then echo "$cache/jars"; return; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven to fetch the Kafka jars (Debian: apt-get install maven)"
  mkdir -p "$cache"
  sed "s/@KAFKA_VERSION@/$version/" "$here/pom.xml" > "$cache/pom.xml"
  echo "kafka.sh: fetching Apache Kafka $version jars from Maven Central into $cache" >&2
  rm -rf "$cache/jars.tmp"
  if ! mvn -q -B -f "$cache/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$cache/jars.tmp" >"$cache/mvn.log" 2>&1; then
    tail -20 "$cache/mvn.log" >&2
    die "Maven could not fetch org.apache.kafka:kafka_2.13:$version (log: $cache/mvn.log)"
  fi
  n=$(ls "$cache/jars.tmp" | grep -c '^slf4j-reload4j' || true)
  [ "$n" = 1 ] || die "expected exactly one SLF4J binding in $cache/jars.tmp, found $n"
  rm -rf "$cache/jars"; mv "$cache/jars.tmp" "$cache/jars"; touch "$cache/.complete"
  echo "$cache/jars"
}

answers() {  # is something listening on the client port?
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

write_config() {
  mkdir -p "$state/data"
  cat > "$state/server.properties" <<EOF
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=$repl
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$repl
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
default.replication.factor=$repl
min.insync.replicas=$min_isr
group.initial.rebalance.delay.ms=0
log.cleaner.enable=true
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.backoff.ms=1000
log.segment.bytes=16777216
log.retention.check.interval.ms=5000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
EOF
  local kv
  for kv in $extra; do
    case "$kv" in *=*) echo "$kv" >> "$state/server.properties" ;; *) die "KAFKA_PROPERTIES: not key=value: $kv" ;; esac
  done
  if [ -n "$extra_file" ]; then cat "$extra_file" >> "$state/server.properties"; fi
  cat > "$state/log4j.properties" <<EOF
log4j.rootLogger=WARN, file
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.Kafka=INFO
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$state/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
}

start() {
  need
  if answers; then echo "kafka.sh: a broker already answers on 127.0.0.1:$port"; return 0; fi
  local cp; cp="$(jars)/*"
  write_config
  if [ ! -f "$state/data/meta.properties" ]; then
    local fargs; read -ra fargs <<< "$format_args"  # split on spaces, no glob ('[name=...]')
    java -cp "$cp" -Dlog4j.configuration="file:$state/log4j.properties" kafka.tools.StorageTool \
      format -t "$cluster_id" -c "$state/server.properties" --ignore-formatted ${fargs[@]+"${fargs[@]}"} >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; die "formatting $state/data failed"; }
  fi
  # the wait below looks for "started" in a fresh log; keep the last run's
  [ -s "$state/server.log" ] && cat "$state/server.log" >> "$state/server.log.old"
  : > "$state/server.log"
  # setsid: the broker gets its own process group, so Ctrl-C in a terminal
  # that ran `make kafka` does not take it down; `kafka.sh stop` does.
  setsid java -Xms128m -Xmx"$heap" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -Dlog4j.configuration="file:$state/log4j.properties" \
    -cp "$cp" kafka.Kafka "$state/server.properties" >"$state/stdout.log" 2>&1 < /dev/null &
  echo $! > "$state/pid"
  local waited=0
  until grep -q "Kafka Server started" "$state/server.log" 2>/dev/null; do
    if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
      tail -n 30 "$state/stdout.log" "$state/server.log" >&2
      die "the broker exited during start-up (logs in $state)"
    fi
    [ "$waited" -lt $((timeout * 10)) ] || { stop; die "the broker did not start in ${timeout}s (logs in $state)"; }
    sleep 0.1; waited=$((waited + 1))
  done
  echo "kafka.sh: Apache Kafka $version (KRaft) answers on 127.0.0.1:$port (pid $(cat "$state/pid"), state $state)"
}

stop() {
  [ -f "$state/pid" ] || { echo "kafka.sh: no broker started from $state"; return 0; }
  local pid; pid=$(cat "$state/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$state/pid"
  echo "kafka.sh: stopped the broker on 127.0.0.1:$port"
}

kill9() {
  [ -f "$state/pid" ] || { echo "kafka.sh: no broker started from $state"; return 0; }
  local pid; pid=$(cat "$state/pid")
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  rm -f "$state/pid"
  echo "kafka.sh: killed (-9) the broker on 127.0.0.1:$port"
}

case "${1:-}" in
  jars) need; jars ;;
  start) start ;;
  stop) stop ;;
  kill) kill9 ;;
  status) if answers; then echo "up on 127.0.0.1:$port"; else echo "down on 127.0.0.1:$port"; exit 1; fi ;;
  *) echo "usage: $0 jars|start|stop|kill|status" >&2; exit 2 ;;
esac
