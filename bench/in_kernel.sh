#!/usr/bin/env bash
# ns per hit of `--count --by comm` on a hot system-wide uprobe: dprobe aggregating in the
# kernel (BPF), bpftrace's `@[comm] = count()`, and dprobe's perf path (each hit a record
# read and counted in dprobe, `--no-bpf`), interleaved round by round with an unprobed
# baseline, the target pinned to one CPU. Needs root.
#   bench/in_kernel.sh          N=1000000 calls, REPS=3 rounds (medians)
. "$(dirname "$0")/lib.sh"
N=${N:-1000000}
REPS=${REPS:-3}
t=$target
# A full path: bpftrace -c wants one.
pin=("$(command -v taskset)" -c 1)
command -v bpftrace >/dev/null || { echo "# bpftrace is needed (apt-get install bpftrace)" >&2; exit 1; }

# The hits a summary's `--by comm` table gives `target`.
table_hits() { awk '$1 == "target" {print $2}' "$1"; }
check() { [ "$1" = "$N" ] || { echo "# $2 counted $1 hits, expected $N" >&2; exit 1; }; }

dprobe_run() { # $1: extra option, $2: summary file
    "$dprobe" trace -a --count --by comm $1 -o "$2" "$t:probed" -- "${pin[@]}" "$t" "$N"
}
bt_run() {
    bpftrace -q -e "uprobe:$t:probed { @[comm] = count(); }" -c "${pin[*]} $t $N" 2>/dev/null
}
base=() kern=() bt=() perf=()
for _ in $(seq "$REPS"); do
    base+=("$("${pin[@]}" "$t" "$N" | total)")
    kern+=("$(dprobe_run "" "$out/in_kernel.bpf" | total)")
    check "$(table_hits "$out/in_kernel.bpf")" "dprobe (BPF)"
    grep -q 'aggregated in the kernel (BPF)' "$out/in_kernel.bpf" || { echo "# not in the kernel" >&2; exit 1; }
    bt_out=$(bt_run)
    bt+=("$(echo "$bt_out" | total)")
    check "$(echo "$bt_out" | awk -F': ' '/^@\[target\]/ {print $2}')" bpftrace
    perf+=("$(dprobe_run --no-bpf "$out/in_kernel.perf" | total)")
    check "$(table_hits "$out/in_kernel.perf")" "dprobe (perf)"
done
med() { printf '%s\n' "$@" | median; }
b=$(med "${base[@]}")
k=$(per_hit "$(med "${kern[@]}")" "$b" "$N")
p=$(per_hit "$(med "${perf[@]}")" "$b" "$N")
bb=$(per_hit "$(med "${bt[@]}")" "$b" "$N")
echo "rounds (ns total): base ${base[*]} | in-kernel ${kern[*]} | bpftrace ${bt[*]} | perf ${perf[*]}"
echo "tool                                           ns/hit   vs bpftrace"
awk -v k="$k" -v p="$p" -v b="$bb" 'BEGIN {
    printf "%-44s %7d %8.2fx\n", "dprobe -a --count --by comm (in the kernel)", k, k / b
    printf "%-44s %7d %8.2fx\n", "bpftrace @[comm] = count()", b, 1
    printf "%-44s %7d %8.2fx\n", "dprobe -a --count --by comm --no-bpf (perf)", p, p / b
}'
