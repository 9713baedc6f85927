#!/usr/bin/env bash
# What a signal costs a command dprobe starts. A traced thread stops at each signal it
# receives until the tracer delivers it; the agent leaves the command's main thread untraced
# until it is about to `exec` (earlier builds: traced all along, for its `exec`). The program (crates/cli/tests/fixtures/signals.c)
# raises SIGUSR1 N times and prints the nanoseconds each raise took (its handler included):
# untraced, under `dprobe trace --count` with the agent and with the ptrace engine, one of each
# per round, medians of REPS rounds. BEFORE=PATH adds the agent of another dprobe binary (an
# earlier build, for a before/after figure).
#   bench/signals.sh        N=5000, REPS=5
. "$(dirname "$0")/lib.sh"
N=${N:-5000}
REPS=${REPS:-5}
prog=$out/signals
cc -O2 -pthread -o "$prog" "$root/crates/cli/tests/fixtures/signals.c"
ns() { sed -n 's/^\([0-9]*\) ns per signal$/\1/p'; }
engines_table "raise, N=$N" ns/signal step ns "$prog" "$N" raise
