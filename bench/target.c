/* The benchmark target: N calls of probed(), timed inside the program around the loop only
 * (start-up, attach and detach are not counted). Prints `TARGET n=N ns_total=T`.
 * `target N 0` runs the loop forever (for the memory run), printing nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile long sink;

__attribute__((noinline)) long probed(long x) {
    sink += x;
    return x + 1;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    if (argc > 2 && atoi(argv[2]) == 0) {
        for (long i = 0;; i++)
            probed(i);
    }
    long long start = now_ns();
    long sum = 0;
    for (long i = 0; i < n; i++)
        sum += probed(i);
    long long total = now_ns() - start;
    printf("TARGET n=%ld ns_total=%lld\n", n, total);
    return sum == n * (n + 1) / 2 ? 0 : 1;
}
