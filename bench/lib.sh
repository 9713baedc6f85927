# What the benchmark scripts share. Source it: `. "$(dirname "$0")/lib.sh"`.
# Sets: here (bench/), root (the project), out (where builds and results go), dprobe (a
# release build of the command, in CARGO_TARGET_DIR if set), target (bench/target.c, built),
# and the helpers below.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
builds=${CARGO_TARGET_DIR:-$root/target}
out=${BENCH_OUT:-$builds/bench}
mkdir -p "$out"
cc -O2 -g -o "$out/target" "$here/target.c"
target=$out/target
(cd "$root" && cargo build --release -q -p dprobe-cli)
dprobe=$builds/release/dprobe

# The loop time a target run printed.
total() { sed -n 's/.*TARGET n=[0-9]* ns_total=\([0-9]*\).*/\1/p' | tail -n1; }
# The median of numbers, one per line.
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# ns per hit: (probed total - baseline total) / N.
per_hit() { awk -v p="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.0f", (p - b) / n }'; }
# Peak resident set of a process, in kB.
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null; }
