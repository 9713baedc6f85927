/* The ptrace floor: the least a breakpoint tracer must do per hit when it steps over the
 * original instruction in place: int3 stop, write the original byte back, rewind RIP,
 * single-step (second stop), write the int3 again, continue. Two stops and two code writes
 * per hit; counts hits and checks that they equal N.
 * Usage: floor_ptrace ADDR_OF_PROBED N TARGET [ARGS] (ADDR as in the file; PIE handled by the
 * load bias read from /proc/PID/maps). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t load_bias(pid_t pid, const char *path) {
    char maps[64], line[512];
    snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
    FILE *f = fopen(maps, "r");
    char real[4096];
    if (!realpath(path, real))
        return 0;
    uint64_t start = 0, off;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, real) && sscanf(line, "%lx-%*x %*s %lx", &start, &off) == 2 && off == 0)
            break;
    if (f)
        fclose(f);
    return start;
}

static int poke_byte(pid_t pid, uint64_t addr, uint8_t byte, uint8_t *old) {
    errno = 0;
    long word = ptrace(PTRACE_PEEKTEXT, pid, (void *)addr, 0);
    if (errno)
        return -1;
    if (old)
        *old = word & 0xff;
    word = (word & ~0xffL) | byte;
    return ptrace(PTRACE_POKETEXT, pid, (void *)addr, (void *)word) == -1 ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s ADDR N TARGET [ARGS]\n", argv[0]);
        return 2;
    }
    uint64_t vaddr = strtoull(argv[1], 0, 16);
    long n = atol(argv[2]);
    pid_t pid = fork();
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execv(argv[3], argv + 3);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0); /* at exec */
    /* Static vaddr for non-PIE; for PIE the bias is where offset 0 is mapped (ELF at 0). */
    uint64_t bias = load_bias(pid, argv[3]);
    uint64_t addr = vaddr < bias ? bias + vaddr : vaddr;
    uint8_t orig;
    if (poke_byte(pid, addr, 0xcc, &orig)) {
        perror("arming");
        return 1;
    }
    long hits = 0;
    ptrace(PTRACE_CONT, pid, 0, 0);
    for (;;) {
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) || WIFSIGNALED(status))
            break;
        int sig = WSTOPSIG(status);
        struct user_regs_struct r;
        ptrace(PTRACE_GETREGS, pid, 0, &r);
        if (sig == SIGTRAP && r.rip == addr + 1) {
            hits++;
            poke_byte(pid, addr, orig, 0);
            r.rip = addr;
            ptrace(PTRACE_SETREGS, pid, 0, &r);
            ptrace(PTRACE_SINGLESTEP, pid, 0, 0);
            waitpid(pid, &status, 0);
            poke_byte(pid, addr, 0xcc, 0);
            ptrace(PTRACE_CONT, pid, 0, 0);
        } else {
            ptrace(PTRACE_CONT, pid, 0, sig == SIGTRAP ? 0 : sig);
        }
    }
    fprintf(stderr, "# floor hits=%ld expected=%ld %s\n", hits, n, hits == n ? "OK" : "MISMATCH");
    return hits == n ? 0 : 1;
}
