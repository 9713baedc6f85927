#!/usr/bin/env bash
# ns per hit of a system-wide uprobe with one string fetch argument: dprobe's kernel engine
# against bpftrace with the same probe on the same target, in one run; then dprobe's peak
# memory while the target calls the probed function as fast as it can. Needs root.
#   bench/kernel.sh            N=1000000, REPS=3 (medians), SECONDS_PER_RUN=30 for memory
. "$(dirname "$0")/lib.sh"
N=${N:-1000000}
REPS=${REPS:-3}
secs=${SECONDS_PER_RUN:-30}

t=$target

base=$(for _ in $(seq "$REPS"); do "$t" "$N" str | total; done | median)

dprobe_run() {
    "$dprobe" trace -a --count -o "$out/kernel.summary" "$t:probed_str s=+0(\$arg1):string" -- "$t" "$N" str
}
dp=$(for _ in $(seq "$REPS"); do dprobe_run | total; done | median)
hits=$(awk '$1 ~ /probed_str$/ {print $2}' "$out/kernel.summary")
[ "$hits" = "$N" ] || { echo "# dprobe counted $hits hits, expected $N" >&2; cat "$out/kernel.summary" >&2; exit 1; }

bt=skip
if command -v bpftrace >/dev/null; then
    bt_run() {
        bpftrace -q -e "uprobe:$t:probed_str { @[str(arg0)] = count(); }" -c "$t $N str" 2>/dev/null
    }
    bt_total=$(for _ in $(seq "$REPS"); do bt_run | total; done | median)
    # Every hit counts once, under its string (the first can read empty: bpf_probe_read_user_str
    # cannot fault the string's page in).
    bt_hits=$(bt_run | awk -F': ' '/^@\[/ {s += $2} END {print s + 0}')
    [ "$bt_hits" = "$N" ] || { echo "# bpftrace counted $bt_hits hits, expected $N" >&2; exit 1; }
    bt=$(per_hit "$bt_total" "$base" "$N")
fi
dp_ns=$(per_hit "$dp" "$base" "$N")
echo "tool                                         ns/hit"
printf '%-44s %6s\n' "dprobe -a (uprobe + string, perf buffer)" "$dp_ns"
printf '%-44s %6s\n' "bpftrace (uprobe + str(), map count)" "$bt"
[ "$bt" != skip ] && awk -v a="$dp_ns" -v b="$bt" 'BEGIN { printf "dprobe / bpftrace: %.2fx\n", a / b }'

# Memory at the highest rate: the target loops forever; dprobe reads and decodes every
# record as fast as it can, and whatever it cannot keep up with is lost and counted.
"$t" 0 str &
loop=$!
"$dprobe" trace -a --count --duration "${secs}s" -o "$out/kernel.memory" "$t:probed_str s=+0(\$arg1):string" &
d=$!
sleep 1; early=$(peak_rss $d)
last=$early
while kill -0 $d 2>/dev/null; do last=$(peak_rss $d || echo "$last"); sleep 1; done
wait $d || true
kill $loop
echo "memory: peak RSS after 1 s ${early} kB, at the end (${secs} s) ${last} kB"
grep -E 'probed_str|lost' "$out/kernel.memory"
