#!/bin/bash
# every 15 s: for each bucketstream worker pid, RssAnon RssFile, threads
out=$1
while true; do
  t=$(date +%s)
  for p in $(pgrep -f "bucketstream" ); do
    c=$(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null | cut -c1-80)
    case "$c" in *worker*) ;; *) continue;; esac
    a=$(awk '/RssAnon|RssFile|Threads/{printf "%s %s ", $1, $2}' /proc/$p/status 2>/dev/null)
    echo "$t $p $a" >>"$out"
  done
  sleep 15
done
