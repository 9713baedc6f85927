// SPDX-License-Identifier: MIT OR Apache-2.0 OR GPL-2.0-only
// (The kernel lets only GPL-compatible programs read memory; it is told "Dual MIT/GPL".)
/*
 * dprobe's in-kernel aggregation: attached to a uprobe, kprobe or tracepoint event, it counts
 * each hit under its key (thread name, process, thread, and for a histogram the value) in a
 * per-CPU hash map that dprobe reads when the trace ends. It returns 0, so the kernel writes
 * no record of the hit anywhere: nothing per event reaches user space.
 *
 * One object serves every probe: what to key by, which value to read and the filters are
 * read-only globals that dprobe sets when loading it, so the verifier sees them as constants
 * and drops the code they turn off.
 *
 * Built with `clang -target bpf -O2 -g`; it includes no header (the helpers are called by
 * their numbers from the kernel's UAPI, which never change), so clang is all it needs.
 */

typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define INLINE static inline __attribute__((always_inline))

/* BTF-defined maps, as the kernel's loaders read them. */
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

/* Map types and helpers by their numbers in include/uapi/linux/bpf.h. */
#define BPF_MAP_TYPE_PERCPU_HASH 5
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_NOEXIST 1

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)16;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *src) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)113;

/* The key: every byte is written (zeroes for the parts not keyed by), since the map compares
 * keys byte for byte. Its layout is read back by dprobe (bpf.rs). */
struct key {
    __u32 pid;
    __u32 tid;
    char comm[16];
    __s64 value;
    /* The value could not be read (memory that faulted): counted, but in no histogram. */
    __u32 faulted;
    __u32 unused;
};

/* What one key gathered on one CPU; min and max are exact, `value` in the key is rounded. */
struct tally {
    __u64 count;
    __s64 min;
    __s64 max;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct key);
    __type(value, struct tally);
} tallies SEC(".maps");

/* Hits that found the map full (a new key had no room). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} dropped SEC(".maps");

/* Set by dprobe at load time. */
const volatile __u32 key_pid = 0;
const volatile __u32 key_tid = 0;
const volatile __u32 key_comm = 0;
/* Only this process's hits (0: every process). */
const volatile __u32 only_pid = 0;
/* dprobe's own process, left out (its own calls while it reads the maps). */
const volatile __u32 own_pid = 0;
/* Only threads of this name (`only_comm_set`). */
const volatile __u32 only_comm_set = 0;
const volatile char only_comm[16] = {};

/* The histogram's value: none, a register of the probe's `pt_regs` (its byte offset), a field
 * of a tracepoint's record (its byte offset), or a constant. */
#define SOURCE_NONE 0
#define SOURCE_REGS 1
#define SOURCE_RECORD 2
#define SOURCE_CONSTANT 3
#define MAX_DEREFS 4
const volatile __u32 source = SOURCE_NONE;
const volatile __u32 source_offset = 0;
const volatile __s64 constant = 0;
/* Then memory read `derefs` times, at the value plus each offset; user memory or kernel. */
const volatile __u32 derefs = 0;
const volatile __s64 deref_offsets[MAX_DEREFS] = {};
const volatile __u32 user_memory = 0;
/* The value's width in bits (1..64) and whether it is signed. */
const volatile __u32 bits = 64;
const volatile __u32 is_signed = 0;

/* The value, read as the fetch says; `*faulted` set when memory could not be read. */
INLINE __s64 fetch(void *ctx, __u32 *faulted) {
    __u64 v = 0;
    if (source == SOURCE_REGS || source == SOURCE_RECORD)
        bpf_probe_read_kernel(&v, sizeof(v), (char *)ctx + source_offset);
    else
        v = constant;
#pragma unroll
    for (int i = 0; i < MAX_DEREFS; i++) {
        if (i < derefs) {
            const void *at = (const void *)(v + deref_offsets[i]);
            __u64 read = 0;
            long err = user_memory ? bpf_probe_read_user(&read, sizeof(read), at)
                                   : bpf_probe_read_kernel(&read, sizeof(read), at);
            if (err) {
                *faulted = 1;
                return 0;
            }
            v = read;
        }
    }
    if (bits < 64) {
        __u32 shift = 64 - bits;
        v <<= shift;
        v = is_signed ? (__u64)((__s64)v >> shift) : v >> shift;
    }
    return (__s64)v;
}

/* The number of significant bits of `m` (0 for 0). */
INLINE __u32 bit_length(__u64 m) {
    __u32 n = 0;
    if (m >> 32) { m >>= 32; n += 32; }
    if (m >> 16) { m >>= 16; n += 16; }
    if (m >> 8) { m >>= 8; n += 8; }
    if (m >> 4) { m >>= 4; n += 4; }
    if (m >> 2) { m >>= 2; n += 2; }
    if (m >> 1) { m >>= 1; n += 1; }
    return n + (__u32)m;
}

/* `v` with its magnitude kept to its 11 leading bits: exact below 2048, within 1/1024 above,
 * in the same power of two. These are the classes of an HDR histogram of 3 significant
 * digits, so dprobe's percentiles come out as from the values themselves. */
INLINE __s64 rounded(__s64 v) {
    __u64 m = v < 0 ? -(__u64)v : (__u64)v;
    __u32 len = bit_length(m);
    if (len > 11) {
        __u32 shift = len - 11;
        m = (m >> shift) << shift;
    }
    return v < 0 ? -(__s64)m : (__s64)m;
}

INLINE int same_comm(const char *a) {
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (a[i] != only_comm[i])
            return 0;
        if (a[i] == 0)
            return 1;
    }
    return 1;
}

/* One more hit of value `v` in this CPU's share of a key. */
INLINE void count_into(struct tally *t, __s64 v) {
    t->count += 1;
    if (source != SOURCE_NONE) {
        if (v < t->min || t->count == 1)
            t->min = v;
        if (v > t->max || t->count == 1)
            t->max = v;
    }
}

INLINE int tally(void *ctx) {
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 pid = pid_tgid >> 32;
    if (pid == own_pid || (only_pid && pid != only_pid))
        return 0;
    struct key k;
    __builtin_memset(&k, 0, sizeof(k));
    if (key_comm || only_comm_set) {
        bpf_get_current_comm(k.comm, sizeof(k.comm));
        if (only_comm_set && !same_comm(k.comm))
            return 0;
        if (!key_comm)
            __builtin_memset(k.comm, 0, sizeof(k.comm));
    }
    if (key_pid)
        k.pid = pid;
    if (key_tid)
        k.tid = (__u32)pid_tgid;
    __s64 v = 0;
    if (source != SOURCE_NONE) {
        v = fetch(ctx, &k.faulted);
        k.value = rounded(v);
    }
    struct tally *t = bpf_map_lookup_elem(&tallies, &k);
    if (t) {
        count_into(t, v);
        return 0;
    }
    struct tally first = {1, v, v};
    if (bpf_map_update_elem(&tallies, &k, &first, BPF_NOEXIST) == 0)
        return 0;
    /* Another CPU made the key meanwhile (this CPU's share is then zero): count here. */
    t = bpf_map_lookup_elem(&tallies, &k);
    if (t) {
        count_into(t, v);
        return 0;
    }
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(&dropped, &zero);
    if (n)
        *n += 1;
    return 0;
}

/* Uprobes and kprobes (their return probes too): `ctx` is the `pt_regs` at the hit. */
SEC("kprobe")
int dprobe_tally_regs(void *ctx) {
    return tally(ctx);
}

/* Tracepoints: `ctx` is the event's record, laid out as its format file says. */
SEC("tracepoint")
int dprobe_tally_record(void *ctx) {
    return tally(ctx);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
