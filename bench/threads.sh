#!/usr/bin/env bash
# One probe hit by several threads at once, through the agent: T threads of bench/target.c
# (`target N threads T`) each make N calls of `own`, counted by `dprobe trace --count`
# (the agent engine), against the same run untraced. Each figure: the wall time of the run's
# threads over N (ns per call in each thread), median of REPS rounds, runs interleaved; every
# count is checked against T * N. With as many threads as cores, a call should cost what it
# costs one thread; with more threads than cores, the threads take turns.
#   bench/threads.sh        N=2000000, T="1 2 4", REPS=3
#   BEFORE=path/to/dprobe bench/threads.sh    also an earlier build, interleaved
. "$(dirname "$0")/lib.sh"
N=${N:-2000000}
T=${T:-1 2 4}
REPS=${REPS:-3}
t=$target

# One run: prints its ns per call in each thread; checks the count.
run() { # label dprobe-or-empty threads
    local o=$out/threads-$1-$3.out
    if [ -z "$2" ]; then
        "$t" "$N" threads "$3" >"$o"
    else
        rm -f "$out/threads-$1.summary"
        if ! "$2" trace --engine agent --count -o "$out/threads-$1.summary" own -- "$t" "$N" threads "$3" \
            >"$o" 2>"$o.err"; then
            echo "# $1, $3 threads: dprobe failed: $(tail -n 3 "$o.err")" >&2
            exit 1
        fi
        local n
        n=$(awk '$1 ~ /own$/ {print $2}' "$out/threads-$1.summary")
        if [ "$n" != "$(($3 * N))" ]; then
            echo "# $1, $3 threads: $n hits, expected $(($3 * N))" >&2
            exit 1
        fi
    fi
    awk -v total="$(total <"$o")" -v n="$N" 'BEGIN { printf "%.1f", total / n }'
}
labels=(untraced agent)
[ -n "${BEFORE:-}" ] && labels+=(before)
declare -A runs
for _ in $(seq "$REPS"); do
    for threads in $T; do
        runs[untraced,$threads]+="$(run untraced "" "$threads") "
        runs[agent,$threads]+="$(run agent "$dprobe" "$threads") "
        [ -n "${BEFORE:-}" ] && runs[before,$threads]+="$(run before "$BEFORE" "$threads") "
    done
done
echo "# $(nproc) cores; rounds, ns per call: $(for k in "${!runs[@]}"; do printf '%s: %s| ' "$k" "${runs[$k]}"; done)"
printf '%-34s' "ns per call in each thread, N=$N"
for threads in $T; do printf ' %10s' "$threads thr"; done
echo
for label in "${labels[@]}"; do
    printf '%-34s' "$label"
    for threads in $T; do printf ' %10s' "$(printf '%s\n' ${runs[$label,$threads]} | median)"; done
    echo
done
