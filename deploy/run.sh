#!/usr/bin/env bash
# `make run`: a local broker and two workers; Ctrl-C stops everything this started.
set -euo pipefail
cd "$(dirname "$0")/.."
PORTS=${BUCKETSTREAM_RUN_PORTS:-"6066 6067"}
BIN=.venv/bin/bucketstream
mkdir -p .run

started_broker=0
if ! deploy/kafka/kafka.sh status >/dev/null 2>&1; then
  deploy/kafka/kafka.sh start
  started_broker=1
else
  echo "run: using the broker that already answers on 127.0.0.1:${KAFKA_PORT:-9092}"
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "run: stopping workers ${pids[*]:-}"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 100); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  [ "$started_broker" = 1 ] && deploy/kafka/kafka.sh stop
  exit 0
}
trap cleanup INT TERM EXIT

# each worker also serves Envoy's rate limit service (gRPC) on its web port + GRPC_OFFSET
GRPC_OFFSET=${BUCKETSTREAM_RUN_GRPC_OFFSET:-1000}
for port in $PORTS; do
  "$BIN" worker --web-port "$port" --grpc-port "$((port + GRPC_OFFSET))" --broker "kafka://127.0.0.1:${KAFKA_PORT:-9092}" \
    --data-dir ".run/worker-$port" --node-id "worker-$port" >".run/worker-$port.log" 2>&1 &
  pids+=($!)
  echo "run: worker on http://127.0.0.1:$port, rate limit service (gRPC) on 127.0.0.1:$((port + GRPC_OFFSET)) (pid $!, log .run/worker-$port.log)"
done

for port in $PORTS; do
  for i in $(seq 600); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "run: a worker exited; see .run/worker-*.log"; tail -20 .run/worker-*.log; exit 1; }; done
    sleep 0.1
  done
done

first=${PORTS%% *}
cat <<EOT

bucketstream is up. Try:

  for i in \$(seq 12); do curl -s -o /dev/null -w '%{http_code} ' -X POST localhost:$first/protected -H 'X-User-ID: alice'; done; echo
  curl -s localhost:$first/buckets/alice

Envoy's rate limit service (domain bucketstream, descriptor entry user=...) on 127.0.0.1:$((first + GRPC_OFFSET)):

  .venv/bin/python -c 'import grpc; from envoy.service.ratelimit.v3 import rls_pb2 as r, rls_pb2_grpc as g; from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor as D; print(g.RateLimitServiceStub(grpc.insecure_channel("127.0.0.1:$((first + GRPC_OFFSET))")).ShouldRateLimit(r.RateLimitRequest(domain="bucketstream", descriptors=[D(entries=[D.Entry(key="user", value="alice")])])))'

Ctrl-C stops the workers$( [ "$started_broker" = 1 ] && echo " and the broker").
EOT
wait
