# sourced by run.sh and threads.sh: start one worker (LABEL PORT [env...]) pinned to core 0, wait until it is ready;
# sets here, label, port, d (its scratch directory) and pid
here=$(cd "$(dirname "$0")" && pwd)
label=$1; port=$2; shift 2
d=/tmp/ab/$label; rm -rf $d; mkdir -p $d
cd "$here/../../.."
env "$@" BUCKETSTREAM_APP_ID=ab$label$RANDOM taskset -c 0 .venv/bin/python ${WRAP:-.venv/bin/bucketstream} worker --web-port $port --data-dir $d/data --capacity 1000000 --rate 1000000 > $d/log 2>&1 &
for i in $(seq 90); do [ "$(curl -s -o /dev/null -w '%{http_code}' localhost:$port/readyz)" = 200 ] && break; sleep 1; done
pid=$(pgrep -f "worker --web-port $port" | head -1)
