#!/usr/bin/env bash
# The agent engine against its peers, on the same targets in one run.
# 1. ns per hit of counting calls of `probed` (bench/target.c): `dprobe trace --count` with the
#    agent, ptrace and kernel engines, bpftrace's `uprobe { @ = count() }`, and Frida (an
#    Interceptor counting in onEnter, bench/frida_count.py) when its Python module is
#    installed. Each figure: (probed loop time - unprobed loop time) / N, the loop timed inside
#    the target; every count is checked against N.
# 2. End to end: a malloc-heavy run of a real program (python3 building a dict, with
#    PYTHONMALLOC=malloc so that every allocation is a libc malloc), timed inside python, under
#    each tool counting `libc:malloc`: slowdown = traced time / untraced time.
# Needs root (the kernel engine, bpftrace).
#   bench/agent.sh          N=100000, E2E=100000, REPS=3 runs each, median
. "$(dirname "$0")/lib.sh"
N=${N:-100000}
E2E=${E2E:-100000}
REPS=${REPS:-3}
t=$target

rep() { for _ in $(seq "$REPS"); do "$@" 2>/dev/null | total; done | median; }
check() { # what got want
    if [ "$2" != "$3" ]; then echo "# $1: $2 hits, expected $3" >&2; exit 1; fi
}
have_frida() { python3 -c 'import frida' 2>/dev/null; }

# --- 1. per hit --------------------------------------------------------------------------
dprobe_count() { # engine probe: one run; the summary in $out/<engine>.summary
    "$dprobe" trace --engine "$1" --count -o "$out/$1.summary" "$2" -- "$t" "$N"
}
base=$(rep "$t" "$N")
declare -A ns
for engine in agent ptrace kernel; do
    probe=probed
    [ "$engine" = kernel ] && probe="$t:probed"
    ns[$engine]=$(per_hit "$(rep dprobe_count "$engine" "$probe")" "$base" "$N")
    check "$engine" "$(awk '$1 ~ /probed$/ {print $2}' "$out/$engine.summary")" "$N"
done
bt_count() { bpftrace -q -e "uprobe:$t:probed { @ = count(); }" -c "$t $N"; }
ns[bpftrace]=$(per_hit "$(rep bt_count)" "$base" "$N")
check bpftrace "$(bt_count 2>/dev/null | awk '/^@:/ {print $2}')" "$N"
ns[frida]=skip
if have_frida; then
    fr_count() { python3 "$here/frida_count.py" - probed "$t" "$N"; }
    ns[frida]=$(per_hit "$(rep fr_count)" "$base" "$N")
    check frida "$(fr_count 2>/dev/null | sed -n 's/^FRIDA n=//p')" "$N"
fi
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
t = time.perf_counter_ns()
d = {str(i): [i] for i in range($E2E)}
print('TARGET n=$E2E ns_total=%d' % (time.perf_counter_ns() - t))
PY
export PYTHONMALLOC=malloc
untraced() { "$py" "$script"; }
with_dprobe() { "$dprobe" trace --engine "$1" --count -o "$out/py-$1.summary" "$2" -- "$py" "$script"; }
declare -A e2e
e2e[untraced]=$(rep untraced)
e2e[agent]=$(rep with_dprobe agent libc:malloc)
e2e[ptrace]=$(rep with_dprobe ptrace libc:malloc)
libc=$(ldd "$py" | awk '/libc.so/ {print $3}')
e2e[kernel]=$(rep with_dprobe kernel "$libc:malloc")
bt_py() { bpftrace -q -e "uprobe:$libc:malloc /pid == cpid/ { @ = count(); }" -c "$py $script"; }
e2e[bpftrace]=$(rep bt_py)
e2e[frida]=skip
if have_frida; then
    fr_py() { FRIDA_ENV=PYTHONMALLOC=malloc python3 "$here/frida_count.py" libc.so.6 malloc "$py" "$script"; }
    e2e[frida]=$(rep fr_py)
fi
mallocs=$(awk '$1 == "libc:malloc" {print $2}' "$out/py-agent.summary")
slowdown() { [ "$1" = skip ] && echo skip || awk -v a="$1" -v b="${e2e[untraced]}" 'BEGIN { printf "%.2fx", a / b }'; }
echo "python3 dict of $E2E, PYTHONMALLOC=malloc ($mallocs mallocs)   ms   slowdown"
for tool in untraced agent ptrace kernel bpftrace frida; do
    ms=$([ "${e2e[$tool]}" = skip ] && echo skip || awk -v n="${e2e[$tool]}" 'BEGIN { printf "%.0f", n / 1e6 }')
    printf '%-44s %8s   %s\n' "$tool" "$ms" "$(slowdown "${e2e[$tool]}")"
done
