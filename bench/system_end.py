#!/usr/bin/env python3
"""How long a system-wide trace takes to start and to end, by probe count (root).

For each glob, runs `dprobe trace -a -v GLOB... -d 100ms` with records read by dprobe and
with `--count` (counted in the kernel by BPF), 5 times each, and prints the median time from
start to "tracing" (placing the probes) and from "tracing" to exit (the 100 ms trace, then
letting go of every probe and writing the summary). The probes are on libc, whose functions
every process on the machine maps: removing a probe takes its breakpoint out of all of them.

    cargo build --release -p dprobe-cli
    sudo python3 bench/system_end.py [path/to/dprobe]
"""
import statistics
import subprocess
import sys
import time

DPROBE = sys.argv[1] if len(sys.argv) > 1 else "target/release/dprobe"
GLOBS = [["libc:getpid"], ["libc:str*"], ["libc:xdr*"], ["libc:a*", "libc:s*", "libc:p*"]]
RUNS = 5


def run(args):
    """(seconds to "tracing", seconds from "tracing" to exit, probes placed) of one run."""
    start = time.perf_counter()
    p = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    tracing = None
    rows = 0
    for line in p.stderr:
        if tracing is None and line.strip() == "dprobe: tracing":
            tracing = time.perf_counter()
        rows += line.startswith("libc:")
    p.wait()
    end = time.perf_counter()
    if p.returncode != 0 or tracing is None:
        raise SystemExit(f"{' '.join(args)}: exit {p.returncode}")
    return tracing - start, end - tracing, rows


print(f"{'probes':>7} {'mode':<8} {'start (s)':>10} {'end (s)':>8}")
print(f"(median of {RUNS}; start: to \"tracing\"; end: from \"tracing\" to exit, the 100 ms trace included)")
for globs in GLOBS:
    for mode in ["records", "count"]:
        extra = ["--count"] if mode == "count" else ["--count", "--no-bpf"]
        runs = [run([DPROBE, "trace", "-a", "-v", *extra, *globs, "-d", "100ms"]) for _ in range(RUNS)]
        starts, ends, rows = zip(*runs)
        print(f"{rows[0]:>7} {mode:<8} {statistics.median(starts):>10.3f} {statistics.median(ends):>8.3f}")
