#!/usr/bin/env bash
# What a probe's int3 hit costs a command dprobe starts. The probe is on `tiny` of
# bench/target.c (too short for a jump: it stays on int3, and each hit is a SIGTRAP the
# program takes). The program prints its loop's time; ns per call, untraced, under
# `dprobe trace --count` with the agent and with the ptrace engine, one of each per round,
# medians of REPS rounds. BEFORE=PATH adds the agent of another dprobe binary (an earlier
# build, for a before/after figure).
#   bench/started_traps.sh        N=20000, REPS=5
. "$(dirname "$0")/lib.sh"
N=${N:-20000}
REPS=${REPS:-5}
per_call() { total | awk -v n="$N" '{ printf "%.0f", $1 / n }'; }
declare -A all
for _ in $(seq "$REPS"); do
    all[untraced]+=" $("$target" "$N" tiny | per_call)"
    for e in agent ptrace; do
        all[$e]+=" $("$dprobe" trace --engine $e --count -o "$out/traps-$e.summary" tiny -- "$target" "$N" tiny | per_call)"
    done
    if [ -n "${BEFORE:-}" ]; then
        all[before]+=" $("$BEFORE" trace --engine agent --count -o "$out/traps-before.summary" tiny -- "$target" "$N" tiny | per_call)"
    fi
done
echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %12s   %s\n' "tiny, N=$N" "ns/call" "rounds"
for k in untraced ${BEFORE:+before} agent ptrace; do
    printf '%-14s %12s   %s\n' "$k" "$(printf '%s\n' ${all[$k]} | median)" "${all[$k]}"
done
