#!/usr/bin/env bash
# ns per hit of dprobe (entry; entry+return) against the ptrace floor, gdb and ltrace, all on
# the same target in one run. Each figure: (probed loop time - unprobed loop time) / N, the
# loop timed inside the target; every hit count is checked against N.
#   bench/run.sh            N=100000 (N_SLOW=20000 for gdb and ltrace); REPS=3 runs each, median
#   PIN=1 bench/run.sh      tracer and target on CPU 0
. "$(dirname "$0")/lib.sh"
N=${N:-100000}
N_SLOW=${N_SLOW:-20000}
REPS=${REPS:-3}
pin=()
[ "${PIN:-0}" = 1 ] && pin=(taskset -c 0)

cc -O2 -o "$out/floor_ptrace" "$here/floor_ptrace.c"
addr=$(nm "$out/target" | awk '$3=="probed" {print $1}')

# rep CMD...: median loop total of REPS runs
rep() { for _ in $(seq "$REPS"); do "$@" 2>/dev/null | total; done | median; }
check() { # name got want
    if [ "$2" != "$3" ]; then echo "# $1: $2 hits, expected $3" >&2; exit 1; fi
}

base=$(rep "${pin[@]}" "$out/target" "$N")
base_slow=$(rep "${pin[@]}" "$out/target" "$N_SLOW")

floor=$(rep "${pin[@]}" "$out/floor_ptrace" "$addr" "$N" "$out/target" "$N")
"$out/floor_ptrace" "$addr" "$N" "$out/target" "$N" >/dev/null 2>"$out/floor.err" || { cat "$out/floor.err"; exit 1; }

dprobe_run() { # probes...: runs with --count and checks the hit counts
    "${pin[@]}" "$dprobe" trace --count -o "$out/dprobe.summary" "$@" -- "$out/target" "$N"
}
entry=$(rep dprobe_run probed)
dprobe_run probed >/dev/null
check "dprobe entry" "$(awk '$1=="probed" {print $2}' "$out/dprobe.summary")" "$N"
both=$(rep dprobe_run probed 'probed%return')
dprobe_run probed 'probed%return' >/dev/null
check "dprobe return" "$(awk '$1=="probed%return" {print $3}' "$out/dprobe.summary")" "$N"

gdb_ns=skip
if command -v gdb >/dev/null; then
    printf 'set pagination off\nset confirm off\nset startup-with-shell off\nbreak probed\ncommands\nsilent\ncontinue\nend\nrun\ninfo breakpoints\n' >"$out/gdb.cmds"
    gdb_run() { "${pin[@]}" gdb -nx -batch -x "$out/gdb.cmds" --args "$out/target" "$N_SLOW" 2>&1; }
    gdb_total=$(for _ in $(seq "$REPS"); do gdb_run | total; done | median)
    check gdb "$(gdb_run | sed -n 's/.*breakpoint already hit \([0-9]*\) time.*/\1/p')" "$N_SLOW"
    gdb_ns=$(per_hit "$gdb_total" "$base_slow" "$N_SLOW")
fi
ltrace_ns=skip
if command -v ltrace >/dev/null; then
    ltrace_run() { "${pin[@]}" ltrace -L -x probed -o "$out/ltrace.out" "$out/target" "$N_SLOW" 2>&1; }
    ltrace_total=$(for _ in $(seq "$REPS"); do ltrace_run | total; done | median)
    ltrace_run >/dev/null
    check ltrace "$(grep -c 'probed(' "$out/ltrace.out")" "$N_SLOW"
    ltrace_ns=$(per_hit "$ltrace_total" "$base_slow" "$N_SLOW")
fi

floor_ns=$(per_hit "$floor" "$base" "$N")
entry_ns=$(per_hit "$entry" "$base" "$N")
both_ns=$(per_hit "$both" "$base" "$N")
ratio() { [ "$2" = skip ] && echo "-" || awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo "tool                          ns/hit   vs ptrace floor"
printf '%-28s %8s   %s\n' "ptrace floor (int3+step)" "$floor_ns" "1.00x"
printf '%-28s %8s   %s\n' "dprobe entry" "$entry_ns" "$(ratio "$entry_ns" "$floor_ns")"
printf '%-28s %8s   %s\n' "dprobe entry+return" "$both_ns" "$(ratio "$both_ns" "$floor_ns")"
printf '%-28s %8s   %s\n' "gdb break+continue" "$gdb_ns" "$(ratio "$gdb_ns" "$floor_ns")"
printf '%-28s %8s   %s\n' "ltrace -x (entry+return)" "$ltrace_ns" "$(ratio "$ltrace_ns" "$floor_ns")"
if [ "$ltrace_ns" != skip ]; then
    echo "ltrace / dprobe entry+return: $(ratio "$ltrace_ns" "$both_ns")"
fi
