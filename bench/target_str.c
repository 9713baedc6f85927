/* The kernel engine's benchmark target: N calls of probed_str(name), timed inside the program
 * around the loop only. Prints `TARGET n=N ns_total=T`. `target_str N 0` loops forever. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile long sink;

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
    const char *name = "/etc/dprobe-benchmark";
    if (argc > 2 && atoi(argv[2]) == 0)
        for (long i = 0;; i++)
            probed_str(name, i);
    long long start = now_ns();
    for (long i = 0; i < n; i++)
        probed_str(name, i);
    printf("TARGET n=%ld ns_total=%lld\n", n, now_ns() - start);
    return 0;
}
