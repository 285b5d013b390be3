#!/bin/bash
# the collector's threshold and passes of every running worker, every 5 s, until watch.stop exists beside it
# (run beside `python -m bench --phases worker`, whose workers' ports are not known in advance)
stop="$(dirname "$0")/watch.stop"
while [ ! -f "$stop" ]; do
  for pid in $(pgrep -f "bucketstream(.cli)? worker"); do
    port=$(tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -o "web-port [0-9]*" | awk '{print $2}')
    [ -z "$port" ] && continue
    echo "$(date +%T) $pid $port $(curl -s -m 1 localhost:$port/metrics | grep -E '^bucketstream_gc_(young_threshold|pause_seconds_(sum|count))' | tr '\n' ' ')"
  done
  sleep 5
done
