#!/usr/bin/env bash
# ns per hit of `dprobe trace --count` with the agent engine against the ptrace engine, on the
# same target in one run: entry, and entry+return. Each figure: (probed loop time - unprobed
# loop time) / N, the loop timed inside the target; every hit count is checked against N.
#   bench/agent.sh          N=100000, REPS=3 runs each, median
. "$(dirname "$0")/lib.sh"
N=${N:-100000}
REPS=${REPS:-3}

rep() { for _ in $(seq "$REPS"); do "$@" 2>/dev/null | total; done | median; }
check() { # name got want
    if [ "$2" != "$3" ]; then echo "# $1: $2 hits, expected $3" >&2; exit 1; fi
}
run() { # engine probes...: one run with --count; the summary in $out/<engine>.summary
    local engine=$1
    shift
    "$dprobe" trace --engine "$engine" --count -o "$out/$engine.summary" "$@" -- "$out/target" "$N"
}

base=$(rep "$out/target" "$N")
declare -A ns
for engine in ptrace agent; do
    entry=$(rep run "$engine" probed)
    run "$engine" probed >/dev/null
    check "$engine entry" "$(awk '$1=="probed" {print $2}' "$out/$engine.summary")" "$N"
    both=$(rep run "$engine" probed 'probed%return')
    run "$engine" probed 'probed%return' >/dev/null
    check "$engine return" "$(awk '$1=="probed%return" {print $3}' "$out/$engine.summary")" "$N"
    ns[$engine.entry]=$(per_hit "$entry" "$base" "$N")
    ns[$engine.both]=$(per_hit "$both" "$base" "$N")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo "dprobe trace --count, N=$N            ns/hit   ptrace / agent"
printf '%-36s %8s\n' "ptrace engine, entry" "${ns[ptrace.entry]}"
printf '%-36s %8s   %s\n' "agent engine, entry" "${ns[agent.entry]}" "$(ratio "${ns[ptrace.entry]}" "${ns[agent.entry]}")"
printf '%-36s %8s\n' "ptrace engine, entry+return" "${ns[ptrace.both]}"
printf '%-36s %8s   %s\n' "agent engine, entry+return" "${ns[agent.both]}" "$(ratio "${ns[ptrace.both]}" "${ns[agent.both]}")"
