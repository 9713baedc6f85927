#!/usr/bin/env bash
# Peak RSS of dprobe over a long run at the highest event rate it can see: the benchmark
# target calling probed() in a loop forever, traced with entry+return probes (a latency
# histogram) and then with one JSON line per event (written to /dev/null). Prints dprobe's
# peak RSS (VmHWM) at the start, after 10 s and at the end, and the events handled.
#   bench/memory.sh          SECONDS_PER_RUN=120
. "$(dirname "$0")/lib.sh"
secs=${SECONDS_PER_RUN:-120}

hwm() { echo "$(peak_rss "$1" || echo -) kB"; }

run() { # label, dprobe args...
    local label=$1; shift
    "$dprobe" trace --duration "${secs}s" -o "$out/memory.$label" "$@" -- "$target" 0 >/dev/null &
    local pid=$!
    sleep 1; local early; early=$(hwm $pid)
    sleep 9; local ten; ten=$(hwm $pid)
    local last=$ten
    while kill -0 $pid 2>/dev/null; do last=$(hwm $pid); sleep 1; done
    wait $pid || true
    pkill -KILL -f "$target 0" || true   # let go at the end of --duration: stop it
    local events
    events=$(awk '$1 ~ /^probed/ {print $2; exit}' "$out/memory.$label")
    echo "$label: peak RSS after 1 s $early, after 10 s $ten, at the end (${secs} s) $last; $events hits"
}
run latency --latency probed
run json --json 'probed x=$arg1:s64' 'probed%return'
