/* Calls the C library's `syscall(SYS_getppid)` N times, five times over, and prints the best
 * nanoseconds a call took: what the agent's own probe on `syscall` adds to each call of a
 * program it is loaded into (Rust's locks wait and wake through `syscall`). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000, sum = 0;
    double best = 1e18;
    for (int round = 0; round < 5; round++) {
        double start = now();
        for (long i = 0; i < n; i++)
            sum += syscall(SYS_getppid);
        double each = (now() - start) / n;
        best = each < best ? each : best;
    }
    printf("%.1f ns per call (%ld)\n", best, sum & 1);
    return 0;
}
