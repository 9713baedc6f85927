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
engines_table "tiny, N=$N" ns/call tiny per_call "$target" "$N" tiny
