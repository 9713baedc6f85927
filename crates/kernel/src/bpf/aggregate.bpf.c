// SPDX-License-Identifier: MIT OR Apache-2.0 OR GPL-2.0-only
// (The kernel lets only GPL-compatible programs read memory; it is told "Dual MIT/GPL".)
/*
 * dprobe's in-kernel aggregation: attached to a uprobe, kprobe or tracepoint event, it counts
 * each hit that passes the filter under its key (thread name, process, thread, a fetched
 * value, and for a histogram the value) in a per-CPU hash map that dprobe reads when the
 * trace ends. It returns 0, so the kernel writes
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
    /* The `--by NAME` value, exact. */
    __s64 by;
    /* The value could not be read (memory that faulted): counted, but in no histogram. */
    __u32 faulted;
    /* The `--by NAME` value could not be read. */
    __u32 by_faulted;
};

/* What one key gathered on one CPU; min, max and sum are exact, `value` in the key is
 * rounded. */
struct tally {
    __u64 count;
    __s64 min;
    __s64 max;
    __s64 sum;
};

/* Built twice (see build.rs): with DPROBE_LAZY_KEYS, the map's entries are allocated as keys
 * arrive (BPF_F_NO_PREALLOC, which tracing programs may use from Linux 6.1); without, all of
 * them when the map is made, as older kernels require. */
#ifdef DPROBE_LAZY_KEYS
#define TALLIES_FLAGS 1 /* BPF_F_NO_PREALLOC */
#else
#define TALLIES_FLAGS 0
#endif

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __uint(map_flags, TALLIES_FLAGS);
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

/* Hits that found no memory for a new key's entry (a map whose entries are allocated as keys
 * arrive). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} unallocated SEC(".maps");

/* Every hit, in every process (dprobe's own too), as the kernel's profile files count the
 * hits of the events a program is attached to: a program attached through a uprobe_multi
 * link has no event counting for it. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} seen SEC(".maps");

/* Hits that did not pass the filter. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} rejected SEC(".maps");

/* Set by dprobe at load time. */
const volatile __u32 key_pid = 0;
const volatile __u32 key_tid = 0;
const volatile __u32 key_comm = 0;
/* Only this process's hits (0: every process). */
const volatile __u32 only_pid = 0;
/* dprobe's own process, left out (its own calls while it reads the maps). */
const volatile __u32 own_pid = 0;
/* dprobe's process the user started, left out too (0: none). */
const volatile __u32 front_pid = 0;
/* Only threads of this name (`only_comm_set`). */
const volatile __u32 only_comm_set = 0;
const volatile char only_comm[16] = {};

/* Where a value is read: nowhere, a register of the probe's `pt_regs` (its byte offset), a
 * field of a tracepoint's record (its byte offset), or a constant; then memory read `derefs`
 * times, at the value plus each offset (user memory or the kernel's); then cut to `bits` bits
 * (1..64), sign-extended when signed. Its layout is written by dprobe (bpf/layout.rs). */
#define SOURCE_NONE 0
#define SOURCE_REGS 1
#define SOURCE_RECORD 2
#define SOURCE_CONSTANT 3
#define MAX_DEREFS 4
struct source {
    __u32 kind;
    __u32 offset;
    __s64 constant;
    __u32 derefs;
    __u32 bits;
    __u32 is_signed;
    __u32 user_memory;
    __s64 deref_offsets[MAX_DEREFS];
};

/* The histogram's value (SOURCE_NONE: no histogram). */
const volatile struct source value = {};
/* The fetched value the hits are keyed by too (`--by NAME`), exactly (SOURCE_NONE: none). */
const volatile struct source by_value = {};

/* The filter, in postfix order: each test pushes a truth on a stack of bits, each AND, OR
 * or NOT combines the top ones; the hit is counted if the last truth is true. A comparison
 * whose value cannot be read is false, as in dprobe. */
#define TEST_EQ 1
#define TEST_NE 2
#define TEST_LT 3
#define TEST_LE 4
#define TEST_GT 5
#define TEST_GE 6
#define TEST_COMM_EQ 7
#define TEST_COMM_NE 8
#define TEST_AND 9
#define TEST_OR 10
#define TEST_NOT 11
#define TEST_CONSTANT 12
#define MAX_TESTS 32
struct test {
    __u32 code;
    __u32 unused;
    /* The number compared with (TEST_CONSTANT: the truth pushed). */
    __s64 literal;
    /* The name compared with the thread's, zero-padded. */
    char text[16];
    struct source value;
};
const volatile __u32 filter_len = 0;
/* Whether a test reads the thread's name. */
const volatile __u32 filter_comm = 0;
const volatile struct test filter[MAX_TESTS] = {};

/* The value `src` says, read at `ctx`; `*faulted` set when memory could not be read. */
INLINE __s64 fetch(void *ctx, const volatile struct source *src, __u32 *faulted) {
    __u64 v = 0;
    if (src->kind == SOURCE_REGS || src->kind == SOURCE_RECORD)
        bpf_probe_read_kernel(&v, sizeof(v), (char *)ctx + src->offset);
    else
        v = src->constant;
#pragma unroll
    for (int i = 0; i < MAX_DEREFS; i++) {
        if (i < src->derefs) {
            const void *at = (const void *)(v + src->deref_offsets[i]);
            __u64 read = 0;
            long err = src->user_memory ? bpf_probe_read_user(&read, sizeof(read), at)
                                        : bpf_probe_read_kernel(&read, sizeof(read), at);
            if (err) {
                *faulted = 1;
                return 0;
            }
            v = read;
        }
    }
    if (src->bits < 64) {
        __u32 shift = 64 - src->bits;
        v <<= shift;
        v = src->is_signed ? (__u64)((__s64)v >> shift) : v >> shift;
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

/* Whether the thread's name `comm` (zero-padded, as the kernel gives it) is `name`. */
INLINE int same_comm(const char *comm, const volatile char *name) {
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (comm[i] != name[i])
            return 0;
        if (comm[i] == 0)
            return 1;
    }
    return 1;
}

/* Push `truth` on `stack`. */
#define PUSH(stack, truth) ((stack) = ((stack) << 1) | ((truth) ? 1 : 0))

/* Whether the hit passes the filter; `comm` is the thread's name if a test reads it. */
INLINE int passes(void *ctx, const char *comm) {
    __u64 stack = 0;
    /* A bounded loop the verifier follows test by test (`filter_len` is known to it). */
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_TESTS; i++) {
        if (i < filter_len) {
            const volatile struct test *t = &filter[i];
            __u32 code = t->code;
            if (code >= TEST_EQ && code <= TEST_GE) {
                __u32 faulted = 0;
                __s64 v = fetch(ctx, &t->value, &faulted);
                __s64 w = t->literal;
                int truth = !faulted && ((code == TEST_EQ && v == w) || (code == TEST_NE && v != w) ||
                                         (code == TEST_LT && v < w) || (code == TEST_LE && v <= w) ||
                                         (code == TEST_GT && v > w) || (code == TEST_GE && v >= w));
                PUSH(stack, truth);
            } else if (code == TEST_COMM_EQ || code == TEST_COMM_NE) {
                int same = same_comm(comm, t->text);
                PUSH(stack, code == TEST_COMM_EQ ? same : !same);
            } else if (code == TEST_CONSTANT) {
                PUSH(stack, t->literal);
            } else if (code == TEST_NOT) {
                stack ^= 1;
            } else {
                __u64 a = stack & 1;
                stack >>= 1;
                __u64 b = stack & 1;
                stack = (stack & ~1ULL) | (code == TEST_AND ? (a & b) : (a | b));
            }
        }
    }
    return stack & 1;
}

/* One more in this CPU's slot of a per-CPU counter. */
INLINE void bump(void *counter) {
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(counter, &zero);
    if (n)
        *n += 1;
}

/* One more hit of value `v` in this CPU's share of a key. */
INLINE void count_into(struct tally *t, __s64 v) {
    t->count += 1;
    if (value.kind != SOURCE_NONE) {
        if (v < t->min || t->count == 1)
            t->min = v;
        if (v > t->max || t->count == 1)
            t->max = v;
        t->sum += v;
    }
}

INLINE int tally(void *ctx) {
    bump(&seen);
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 pid = pid_tgid >> 32;
    if (pid == own_pid || (front_pid && pid == front_pid) || (only_pid && pid != only_pid))
        return 0;
    struct key k;
    __builtin_memset(&k, 0, sizeof(k));
    if (key_comm || only_comm_set || filter_comm) {
        bpf_get_current_comm(k.comm, sizeof(k.comm));
        if (only_comm_set && !same_comm(k.comm, only_comm))
            return 0;
    }
    if (filter_len && !passes(ctx, k.comm)) {
        bump(&rejected);
        return 0;
    }
    if (!key_comm)
        __builtin_memset(k.comm, 0, sizeof(k.comm));
    if (key_pid)
        k.pid = pid;
    if (key_tid)
        k.tid = (__u32)pid_tgid;
    __s64 v = 0;
    if (value.kind != SOURCE_NONE) {
        v = fetch(ctx, &value, &k.faulted);
        k.value = rounded(v);
    }
    if (by_value.kind != SOURCE_NONE)
        k.by = fetch(ctx, &by_value, &k.by_faulted);
    struct tally *t = bpf_map_lookup_elem(&tallies, &k);
    if (t) {
        count_into(t, v);
        return 0;
    }
    struct tally first = {1, v, v, v};
    long made = bpf_map_update_elem(&tallies, &k, &first, BPF_NOEXIST);
    if (made == 0)
        return 0;
    /* Another CPU made the key meanwhile (this CPU's share is then zero): count here. */
    t = bpf_map_lookup_elem(&tallies, &k);
    if (t) {
        count_into(t, v);
        return 0;
    }
    /* -E2BIG: every entry taken; anything else, no memory for the entry. */
    if (made == -7)
        bump(&dropped);
    else
        bump(&unallocated);
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
