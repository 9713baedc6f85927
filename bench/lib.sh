# What the benchmark scripts share. Source it: `. "$(dirname "$0")/lib.sh"`.
# Sets: here (bench/), root (the project), out (where builds and results go), dprobe (a
# release build of the command, in CARGO_TARGET_DIR if set), target (bench/target.c, built),
# and the helpers below.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
builds=${CARGO_TARGET_DIR:-$root/target}
out=${BENCH_OUT:-$builds/bench}
mkdir -p "$out"
cc -O2 -g -pthread -o "$out/target" "$here/target.c"
target=$out/target
(cd "$root" && cargo build --release -q -p dprobe-cli)
dprobe=$builds/release/dprobe

# The loop time a target run printed.
total() { sed -n 's/.*TARGET n=[0-9]* ns_total=\([0-9]*\).*/\1/p' | tail -n1; }
# The median of numbers, one per line.
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# ns per hit: (probed total - baseline total) / N.
per_hit() { awk -v p="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.0f", (p - b) / n }'; }
# Peak resident set of a process, in kB.
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# REPS rounds of a program run untraced, under `dprobe trace --count PROBE` with the agent
# and with the ptrace engine, and with BEFORE's agent when BEFORE is set (an earlier build),
# one of each per round; prints the medians of the figure MEASURE reads from each run's
# output (standard output and error together), with every round's figure.
#   engines_table 'LABEL' 'UNIT' PROBE MEASURE PROGRAM ARGS...
engines_table() {
    local label=$1 unit=$2 probe=$3 measure=$4
    shift 4
    declare -A all
    for _ in $(seq "$REPS"); do
        all[untraced]+=" $("$@" 2>&1 | $measure)"
        for e in agent ptrace; do
            all[$e]+=" $("$dprobe" trace --engine $e --count -o "$out/$probe-$e.summary" "$probe" -- "$@" 2>&1 | $measure)"
        done
        if [ -n "${BEFORE:-}" ]; then
            all[before]+=" $("$BEFORE" trace --engine agent --count -o "$out/$probe-before.summary" "$probe" -- "$@" 2>&1 | $measure)"
        fi
    done
    echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-14s %12s   %s\n' "$label" "$unit" "rounds"
    local k
    for k in untraced ${BEFORE:+before} agent ptrace; do
        printf '%-14s %12s   %s\n' "$k" "$(printf '%s\n' ${all[$k]} | median)" "${all[$k]}"
    done
}
