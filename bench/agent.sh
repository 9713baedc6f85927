#!/usr/bin/env bash
# The agent engine against its peers, on the same targets in one run.
# 1. ns per hit of counting calls of `probed` (bench/target.c): `dprobe trace --count` with the
#    agent, ptrace and kernel engines, and, each when installed, bpftrace's
#    `uprobe { @ = count() }` and Frida (an Interceptor counting in onEnter,
#    bench/frida_count.py). Each figure: (probed loop time - unprobed loop time) / N, the loop timed inside
#    the target; every count is checked against N.
# 2. End to end: a malloc-heavy run of a real program (python3 building a dict, with
#    PYTHONMALLOC=malloc so that every allocation is a libc malloc), timed inside python, under
#    each tool counting `libc:malloc`: slowdown = traced time / untraced time, of the elapsed
#    time and of the main thread's CPU time (less disturbed by other work on the machine; it
#    leaves out the ptrace engine's stops, whose cost is the tracer's and the switches').
# Runs are interleaved (one of each tool per round), so that a change of the machine's load
# falls on every tool alike; each figure is the median of its rounds. Needs root (the kernel
# engine, bpftrace).
#   bench/agent.sh          N=100000, E2E=100000, REPS=3 rounds, medians
. "$(dirname "$0")/lib.sh"
N=${N:-100000}
E2E=${E2E:-100000}
REPS=${REPS:-3}
t=$target

check() { # what got want
    if [ "$2" != "$3" ]; then echo "# $1: $2 hits, expected $3" >&2; exit 1; fi
}
have_frida() { python3 -c 'import frida' 2>/dev/null; }
have_bpftrace() { command -v bpftrace >/dev/null 2>&1; }
med() { printf '%s\n' $1 | median; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# load average at the start: $(load)"

# --- 1. per hit --------------------------------------------------------------------------
# One run of a tool counting `probed`: prints the loop's time, checks the count.
hit_run() {
    local o=$out/hit-$1.out n=
    case $1 in
    base) "$t" "$N" >"$o" ;;
    agent | ptrace)
        "$dprobe" trace --engine "$1" --count -o "$out/$1.summary" probed -- "$t" "$N" >"$o" 2>/dev/null
        n=$(awk '$1 ~ /probed$/ {print $2}' "$out/$1.summary") ;;
    kernel)
        "$dprobe" trace --engine kernel --count -o "$out/kernel.summary" "$t:probed" -- "$t" "$N" >"$o" 2>/dev/null
        n=$(awk '$1 ~ /probed$/ {print $2}' "$out/kernel.summary") ;;
    bpftrace)
        bpftrace -q -e "uprobe:$t:probed { @ = count(); }" -c "$t $N" >"$o" 2>/dev/null
        n=$(awk '/^@:/ {print $2}' "$o") ;;
    frida)
        python3 "$here/frida_count.py" - probed "$t" "$N" >"$o" 2>/dev/null
        n=$(sed -n 's/^FRIDA n=//p' "$o") ;;
    esac
    [ "$1" = base ] || check "$1" "$n" "$N"
    total <"$o"
}
tools=(base agent ptrace kernel)
have_bpftrace && tools+=(bpftrace)
have_frida && tools+=(frida)
declare -A runs ns
for _ in $(seq "$REPS"); do
    for tool in "${tools[@]}"; do runs[$tool]+="$(hit_run "$tool") "; done
done
base=$(med "${runs[base]}")
ns[frida]=skip ns[bpftrace]=skip
for tool in "${tools[@]:1}"; do ns[$tool]=$(per_hit "$(med "${runs[$tool]}")" "$base" "$N"); done
echo "# rounds, loop ns: $(for tool in "${tools[@]}"; do printf '%s: %s| ' "$tool" "${runs[$tool]}"; done)"
ratio() { [ "$1" = skip ] && echo - || awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
echo "counting calls of probed, N=$N                ns/hit   / agent"
for tool in agent ptrace kernel bpftrace frida; do
    printf '%-44s %8s   %s\n' "$tool" "${ns[$tool]}" "$(ratio "${ns[$tool]}" "${ns[agent]}")"
done

# --- 2. end to end: python3 allocating ------------------------------------------------------
# The interpreter itself (not a wrapper script such as pyenv's shims).
py=$(readlink -f /usr/bin/python3 2>/dev/null || readlink -f "$(command -v python3)")
script=$out/allocate.py
cat >"$script" <<PY
import time
t, c = time.perf_counter_ns(), time.thread_time_ns()
d = {str(i): [i] for i in range($E2E)}
print('TARGET n=$E2E ns_total=%d cpu_ns=%d' % (time.perf_counter_ns() - t, time.thread_time_ns() - c))
PY
export PYTHONMALLOC=malloc
libc=$(ldd "$py" | awk '/libc.so/ {print $3}')
# One run of python under a tool counting `libc:malloc`: prints "elapsed cpu" (ns).
py_run() {
    local o=$out/py-$1.out
    case $1 in
    untraced) "$py" "$script" >"$o" ;;
    agent | ptrace)
        "$dprobe" trace --engine "$1" --count -o "$out/py-$1.summary" libc:malloc -- "$py" "$script" >"$o" 2>/dev/null ;;
    kernel)
        "$dprobe" trace --engine kernel --count -o "$out/py-kernel.summary" "$libc:malloc" -- "$py" "$script" \
            >"$o" 2>/dev/null ;;
    bpftrace)
        bpftrace -q -e "uprobe:$libc:malloc /pid == cpid/ { @ = count(); }" -c "$py $script" >"$o" 2>/dev/null ;;
    frida)
        FRIDA_ENV=PYTHONMALLOC=malloc python3 "$here/frida_count.py" libc.so.6 malloc "$py" "$script" \
            >"$o" 2>/dev/null ;;
    esac
    echo "$(total <"$o") $(sed -n 's/.*TARGET .* cpu_ns=\([0-9]*\).*/\1/p' "$o" | tail -n1)"
}
tools=(untraced agent ptrace kernel)
have_bpftrace && tools+=(bpftrace)
have_frida && tools+=(frida)
declare -A wall cpu
for _ in $(seq "$REPS"); do
    for tool in "${tools[@]}"; do
        read -r w c <<<"$(py_run "$tool")"
        wall[$tool]+="$w " cpu[$tool]+="$c "
    done
done
echo "# rounds, elapsed ns: $(for tool in "${tools[@]}"; do printf '%s: %s| ' "$tool" "${wall[$tool]}"; done)"
echo "# rounds, cpu ns: $(for tool in "${tools[@]}"; do printf '%s: %s| ' "$tool" "${cpu[$tool]}"; done)"
mallocs=$(awk '$1 == "libc:malloc" {print $2}' "$out/py-agent.summary")
echo "python3 dict of $E2E, PYTHONMALLOC=malloc ($mallocs mallocs)   ms   slowdown   cpu ms   cpu slowdown"
u_wall=$(med "${wall[untraced]}") u_cpu=$(med "${cpu[untraced]}")
for tool in untraced agent ptrace kernel bpftrace frida; do
    if [ -z "${wall[$tool]:-}" ]; then
        printf '%-44s %8s\n' "$tool" skip
        continue
    fi
    awk -v tool="$tool" -v w="$(med "${wall[$tool]}")" -v c="$(med "${cpu[$tool]}")" -v uw="$u_wall" -v uc="$u_cpu" \
        'BEGIN { printf "%-44s %8.0f %9.2fx %8.0f %9.2fx%s\n", tool, w / 1e6, w / uw, c / 1e6, c / uc,
                 tool == "ptrace" ? "  (cpu without the tracer)" : "" }'
done
echo "# load average at the end: $(load)"
