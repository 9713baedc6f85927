#!/usr/bin/env bash
# What following a program into the programs it executes costs. A shell runs `/bin/true` (a
# child's exec) and then executes the next shell (its own exec), N times: 2N execs, each
# followed by dprobe (the agent is loaded into each new program, before its constructors,
# and given the probe; the ptrace engine places the probe at the exec stop). The chain prints
# its own time; ns per exec, untraced, under `dprobe trace --count libc:getenv` with the
# agent and with the ptrace engine, one of each per round, medians of REPS rounds.
#   bench/exec_chain.sh        N=50, REPS=5
. "$(dirname "$0")/lib.sh"
N=${N:-50}
REPS=${REPS:-5}
chain=$out/exec_chain.sh
cat > "$chain" <<'SH'
n=$1
start=${2:-$(date +%s%N)}
if [ "$n" -eq 0 ]; then
    echo "CHAIN ns=$(($(date +%s%N) - start))"
    exit 0
fi
/bin/true
exec /bin/sh "$0" $((n - 1)) "$start"
SH
per_exec() { sed -n 's/.*CHAIN ns=\([0-9]*\).*/\1/p' | tail -n1 | awk -v n="$N" '{ printf "%.0f", $1 / (2 * n) }'; }
engines_table "execs, N=$N" ns/exec libc:getenv per_exec /bin/sh "$chain" "$N"
