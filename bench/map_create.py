#!/usr/bin/env python3
"""The cost of making the in-kernel tally map (root).

dprobe's BPF program (crates/kernel/src/bpf/aggregate.bpf.c) counts into a per-CPU hash map
of 16,384 keys (48-byte key, 32-byte value), one map per probe. This makes such a map 21 times
with its entries allocated up front (the kernel's default) and 21 times allocated as keys
arrive (BPF_F_NO_PREALLOC, which dprobe uses from Linux 6.1), and prints the median and the
fastest time of each.

    sudo python3 bench/map_create.py
"""
import ctypes
import os
import struct
import time

SYS_BPF = 321  # x86-64
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_F_NO_PREALLOC = 1
KEY_BYTES, VALUE_BYTES, KEYS = 48, 32, 16384

libc = ctypes.CDLL(None, use_errno=True)


def create(flags):
    """Seconds one BPF_MAP_CREATE took."""
    attr = struct.pack("IIIII", BPF_MAP_TYPE_PERCPU_HASH, KEY_BYTES, VALUE_BYTES, KEYS, flags)
    attr += b"\0" * 100
    buf = ctypes.create_string_buffer(attr, len(attr))
    start = time.perf_counter()
    fd = libc.syscall(SYS_BPF, BPF_MAP_CREATE, buf, len(attr))
    took = time.perf_counter() - start
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_MAP_CREATE: {os.strerror(err)}")
    os.close(fd)
    return took


def main():
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for flags, name in [(0, "allocated up front"), (BPF_F_NO_PREALLOC, "allocated as keys arrive")]:
        times = sorted(create(flags) for _ in range(21))
        print(f"{name}: median {times[10] * 1e3:.2f} ms, fastest {times[0] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
