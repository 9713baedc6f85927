/* The benchmark target: N calls of a probed function, timed inside the program around the
 * loop only (start-up, attach and detach are not counted). Prints `TARGET n=N ns_total=T`.
 *   target N            probed(i)
 *   target N str        probed_str("/etc/dprobe-benchmark", i): a string for fetch arguments
 *   target N tiny       tiny(i): a function too short for a jump (its probe stays on int3)
 *   target N threads T  T threads at once, each N calls of own(i), which writes a variable of
 *                       its thread's (a shared one would move from core to core at each call:
 *                       a cost of the program, not of the probe); ns_total is the wall time
 * N = 0 runs the loop forever (for the memory runs), printing nothing (not with threads). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile long sink;

__attribute__((noinline)) long probed(long x) {
    sink += x;
    return x + 1;
}

/* 4 bytes (`lea 1(%rdi),%eax; ret`): no room for a 5-byte jump. */
__attribute__((noinline)) int tiny(int x) { return x + 1; }

static long long now_ns(void);

static __thread volatile long own_sink;

__attribute__((noinline)) long own(long x) {
    own_sink += x;
    return x + 1;
}

static long per_thread;

static void *own_calls(void *unused) {
    long sum = 0;
    (void)unused;
    for (long i = 0; i < per_thread; i++)
        sum += own(i);
    return (void *)(long)(sum == per_thread * (per_thread + 1) / 2);
}

/* T threads, each N calls of own(i), started together; 0 when every sum was right. */
static int threads(long n, int t) {
    pthread_t id[64];
    long long start;
    int ok = 1;
    per_thread = n;
    if (t < 1 || t > 64)
        return 1;
    start = now_ns();
    for (int k = 0; k < t; k++)
        if (pthread_create(&id[k], NULL, own_calls, NULL)) {
            t = k;
            ok = 0;
        }
    for (int k = 0; k < t; k++) {
        void *right;
        pthread_join(id[k], &right);
        ok &= right != NULL;
    }
    printf("TARGET n=%ld ns_total=%lld\n", n, now_ns() - start);
    return !ok;
}

__attribute__((noinline)) long probed_str(const char *s, long i) {
    sink += s[0] + i;
    return i;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    if (argc > 3 && !strcmp(argv[2], "threads"))
        return threads(n, atoi(argv[3]));
    int str = argc > 2 && !strcmp(argv[2], "str");
    int short_one = argc > 2 && !strcmp(argv[2], "tiny");
    const char *name = "/etc/dprobe-benchmark";
    long long start = now_ns();
    long sum = 0;
    for (long i = 0; n == 0 || i < n; i++)
        sum += str ? probed_str(name, i) : short_one ? tiny((int)i) : probed(i);
    printf("TARGET n=%ld ns_total=%lld\n", n, now_ns() - start);
    return str || sum == n * (n + 1) / 2 ? 0 : 1;
}
