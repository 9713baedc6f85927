#!/usr/bin/env bash
# What the agent's own probe on the C library's `syscall` (it watches for seccomp filters,
# `crates/agent/src/syscall_site.rs`) adds to each call of a program it is loaded into: the
# program (bench/syscall_calls.c) calls `syscall(SYS_getppid)` N times, five times over, and
# prints the best nanoseconds a call took; untraced, under `dprobe trace --count` with the
# agent and with the ptrace engine (which places no such probe), one of each per round,
# medians of REPS rounds. The probe counted, `libc:getpid`, is never called. BEFORE=PATH adds
# the agent of another dprobe binary (an earlier build, for a before/after figure).
#   bench/agent_syscall.sh  N=1000000, REPS=5
. "$(dirname "$0")/lib.sh"
N=${N:-1000000}
REPS=${REPS:-5}
prog=$out/syscall_calls
cc -O2 -o "$prog" "$here/syscall_calls.c"
ns() { sed -n 's/^\([0-9.]*\) ns per call.*/\1/p'; }
engines_table "syscall, N=$N" ns/call libc:getpid ns "$prog" "$N"
