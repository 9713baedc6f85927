#!/usr/bin/env bash
# Every function of the C library counted (`libc:*`, about 2,200 probes) while a small
# program formats N numbers (malloc, snprintf, strlen, free each time): the wall time of the
# whole `dprobe trace` (placing the probes, the run, the summary), untraced, with the agent
# and with the ptrace engine, one of each per round, medians of REPS rounds. BEFORE=PATH
# adds the agent of another dprobe binary (an earlier build, for a before/after figure).
#   bench/libc_all.sh        N=200000, REPS=1 (the ptrace engine takes minutes a round)
. "$(dirname "$0")/lib.sh"
N=${N:-200000}
REPS=${REPS:-1}
cat > "$out/libc_calls.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    long s = 0;
    for (int i = 0; i < n; i++) {
        char *p = malloc(32);
        snprintf(p, 32, "%d", i);
        s += strlen(p);
        free(p);
    }
    printf("%ld\n", s);
    return 0;
}
C
cc -O2 -o "$out/libc_calls" "$out/libc_calls.c"
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}
declare -A all
for _ in $(seq "$REPS"); do
    all[untraced]+=" $(seconds "$out/libc_calls" "$N")"
    for e in agent ptrace; do
        all[$e]+=" $(seconds "$dprobe" trace --engine $e -c --max-probes 4000 'libc:*' -- "$out/libc_calls" "$N")"
    done
    if [ -n "${BEFORE:-}" ]; then
        all[before]+=" $(seconds "$BEFORE" trace -c --max-probes 4000 'libc:*' -- "$out/libc_calls" "$N")"
    fi
done
echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-10s %10s   %s\n' "libc:*, N=$N" "s" "rounds"
for k in untraced ${BEFORE:+before} agent ptrace; do
    printf '%-10s %10s   %s\n' "$k" "$(printf '%s\n' ${all[$k]} | median)" "${all[$k]}"
done
