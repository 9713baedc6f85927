/* The benchmark target: N calls of a probed function, timed inside the program around the
 * loop only (start-up, attach and detach are not counted). Prints `TARGET n=N ns_total=T`.
 *   target N            probed(i)
 *   target N str        probed_str("/etc/dprobe-benchmark", i): a string for fetch arguments
 *   target N tiny       tiny(i): a function too short for a jump (its probe stays on int3)
 * N = 0 runs the loop forever (for the memory runs), printing nothing. */
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
