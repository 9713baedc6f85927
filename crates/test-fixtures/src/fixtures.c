/* Functions dprobe's return-probe and typed-entry tests probe. */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static __thread jmp_buf env;

/* Probed: never returns when x >= 0, it longjmps out. */
__attribute__((noinline, noipa)) long fxc_victim(long x) {
    if (x >= 0)
        longjmp(env, 1);
    return x;
}

/* Returns -1 when fxc_victim longjmped, else its result. */
long fxc_jump_out(long x) {
    if (setjmp(env))
        return -1;
    return fxc_victim(x);
}

/* Recursion the compiler cannot turn into a loop: the call goes through a volatile pointer. */
long fxc_recurse(long n);
static long (*volatile recurse_ptr)(long) = fxc_recurse;
__attribute__((noinline, noipa)) long fxc_recurse(long n) {
    if (n == 0)
        return 0;
    return recurse_ptr(n - 1) + 1;
}

/* Probed: with code >= 0 it ends the calling thread without unwinding, leaving its return
 * pending; with code < 0 it returns code. */
__attribute__((noinline, noipa)) long fxc_exit_thread(long code) {
    if (code >= 0)
        syscall(SYS_exit, code);
    return code;
}

/* Eight integers and two doubles: a0..a5 in registers, a6 and a7 on the stack, x and y in
 * xmm0 and xmm1. */
__attribute__((noinline, noipa)) double fxc_many_args(long a0, int a1, short a2, signed char a3, unsigned long a4,
                                                     long a5, long a6, long a7, double x, float y) {
    return (double)(a0 + a1 + a2 + a3 + (long)a4 + a5 + a6 + a7) + x + (double)y;
}

/* A plain function for return-value tests. */
__attribute__((noinline, noipa)) long fxc_add(long a, long b) {
    return a + b;
}

/* A two-level call chain with frame pointers: fxc_outer calls fxc_middle calls fxc_add. */
__attribute__((noinline, noipa)) long fxc_middle(long a) {
    return fxc_add(a, 1) + 1;
}

__attribute__((noinline, noipa)) long fxc_outer(long a) {
    return fxc_middle(a) + 1;
}

/* Probed: exits the process from inside, so its return never comes. */
__attribute__((noinline, noipa)) long fxc_exit_process(long code) {
    _exit((int)code);
}

/* A tail call between two functions: fxc_tail_outer ends in `jmp fxc_tail_inner`, so
 * fxc_tail_inner returns straight to fxc_tail_outer's caller. fxc_tail_outer(x) = 3(x + 1). */
__attribute__((noinline, noipa)) long fxc_tail_inner(long x) { return 3 * x; }
__asm__(".globl fxc_tail_outer\n.type fxc_tail_outer,@function\nfxc_tail_outer:\n"
        "add $1,%rdi\njmp fxc_tail_inner@PLT\n.size fxc_tail_outer, .-fxc_tail_outer\n");

/* fxc_alt_outer(x, sig) raises `sig`, whose handler (fxc_on_alt_signal, installed by the
 * test, on an alternate stack) calls fxc_alt_nested(x) = 5x; it returns that plus one. */
static volatile long alt_arg, alt_result;
__attribute__((noinline, noipa)) long fxc_alt_nested(long x) { return 5 * x; }
void fxc_on_alt_signal(int sig) {
    (void)sig;
    alt_result = fxc_alt_nested(alt_arg);
}
__attribute__((noinline, noipa)) long fxc_alt_outer(long x, int sig) {
    alt_arg = x;
    syscall(SYS_tgkill, getpid(), gettid(), sig);
    return alt_result + 1;
}

/* Recursion whose innermost call raises `sig` (set by fxc_signal_recurse_setup), whose handler
 * (fxc_on_signal_recurse, installed by the test, on an alternate stack) recurses with
 * fxc_recurse. fxc_signal_recurse(n) = n + the handler's depth. */
static volatile long signal_depth, signal_seen;
static volatile int signal_number;
void fxc_signal_recurse_setup(long depth_in_handler, int sig) {
    signal_depth = depth_in_handler;
    signal_number = sig;
}
void fxc_on_signal_recurse(int sig) {
    (void)sig;
    signal_seen = fxc_recurse(signal_depth);
}
long fxc_signal_recurse(long n);
static long (*volatile signal_recurse_ptr)(long) = fxc_signal_recurse;
__attribute__((noinline, noipa)) long fxc_signal_recurse(long n) {
    if (n == 0) {
        syscall(SYS_tgkill, getpid(), gettid(), signal_number);
        return signal_seen;
    }
    return signal_recurse_ptr(n - 1) + 1;
}

/* Its own return address: where its caller resumes. */
__attribute__((noinline, noipa)) long fxc_own_return(void) {
    return (long)__builtin_extract_return_addr(__builtin_return_address(0));
}

/* Calls fxc_own_return from one call site, so that the answer is the same each time. */
__attribute__((noinline, noipa)) long fxc_ask_own_return(void) {
    long r = fxc_own_return();
    __asm__ volatile("" ::: "memory"); /* not a tail call */
    return r;
}

/* Tail calls into functions whose returns are not watched. fxc_tail_rec(n) ends in
 * `jmp fxc_tail_rec_step`, which calls fxc_tail_rec(n - 1) (a real call) and adds 2:
 * fxc_tail_rec(n) = 2n, each level returning with its callee's value. */
long fxc_tail_rec(long n);
__attribute__((noinline, noipa)) long fxc_tail_rec_step(long n) {
    if (n <= 0)
        return 0;
    long r = fxc_tail_rec(n - 1);
    __asm__ volatile("" ::: "memory"); /* not a tail call */
    return r + 2;
}
__asm__(".globl fxc_tail_rec\n.type fxc_tail_rec,@function\nfxc_tail_rec:\n"
        "jmp fxc_tail_rec_step@PLT\n.size fxc_tail_rec, .-fxc_tail_rec\n");

/* Tail calls all the way down: fxc_tail_loop(n) ends in `jmp fxc_tail_loop_step`, which ends
 * in `jmp fxc_tail_loop` with n - 1 until n is 0, and then returns 7: every level of
 * fxc_tail_loop returns 7 through the one return address of the first call. */
__asm__(".globl fxc_tail_loop\n.type fxc_tail_loop,@function\nfxc_tail_loop:\n"
        "jmp fxc_tail_loop_step\n.size fxc_tail_loop, .-fxc_tail_loop\n"
        ".globl fxc_tail_loop_step\n.type fxc_tail_loop_step,@function\nfxc_tail_loop_step:\n"
        "test %rdi,%rdi\njz 1f\nsub $1,%rdi\njmp fxc_tail_loop\n1:\nmov $7,%eax\nret\n"
        ".size fxc_tail_loop_step, .-fxc_tail_loop_step\n");

/* fxc_tail_victim ends in `jmp fxc_victim` (which longjmps out when x >= 0);
 * fxc_jump_out_tail(x) returns -1 when it did, else x. */
__asm__(".globl fxc_tail_victim\n.type fxc_tail_victim,@function\nfxc_tail_victim:\n"
        "jmp fxc_victim@PLT\n.size fxc_tail_victim, .-fxc_tail_victim\n");
long fxc_tail_victim(long x);
long fxc_jump_out_tail(long x) {
    if (setjmp(env))
        return -1;
    return fxc_tail_victim(x);
}

/* Recursion n deep whose innermost call longjmps back to the top: fxc_deep_jump_out(n)
 * returns -1 when it did (n >= 0), else n. Each level adds 1 on its way back otherwise. */
static __thread jmp_buf deep_env;
long fxc_deep_victim(long n);
static long (*volatile deep_victim_ptr)(long) = fxc_deep_victim;
__attribute__((noinline, noipa)) long fxc_deep_victim(long n) {
    if (n == 0)
        longjmp(deep_env, 1);
    if (n < 0)
        return n;
    return deep_victim_ptr(n - 1) + 1;
}
long fxc_deep_jump_out(long n) {
    if (setjmp(deep_env))
        return -1;
    return fxc_deep_victim(n);
}

/* Calls back into the test while it is pending: cb(x) + 1. */
__attribute__((noinline, noipa)) long fxc_call_back(long (*cb)(long), long x) {
    return cb(x) + 1;
}

/* Two coroutines (ucontext), each on a stack mapped for it: each recurses `depth` deep with
 * fxc_co_rec, whose bottom switches back to the caller, leaving every frame pending; then
 * the first resumed returns while the second's frames are the latest pending, on a stack
 * above its own (`higher` != 0) or below. fxc_co_rec(n) = n; fxc_coroutines returns
 * rounds * depth * 1001, or -1 when a stack could not be mapped. */
long fxc_co_rec(long n);
static long (*volatile co_again)(long) = fxc_co_rec;
static ucontext_t co_main, co_ctx[2];
static int co_current;
static long co_depth, co_result[2];
__attribute__((noinline, noipa)) long fxc_co_rec(long n) {
    if (n == 0) {
        swapcontext(&co_ctx[co_current], &co_main);
        return 0;
    }
    return co_again(n - 1) + 1;
}
static void co_body(int which) { co_result[which] += fxc_co_rec(co_depth); }
static char *co_stack(size_t size) {
    /* The guard page below keeps it apart from a neighbouring mapping. */
    void *m = mmap(NULL, size + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m, 4096, PROT_NONE))
        return NULL;
    return (char *)m + 4096;
}
long fxc_coroutines(long rounds, long depth, int higher) {
    const size_t size = 256 * 1024;
    char *a = co_stack(size), *b = co_stack(size);
    if (!a || !b)
        return -1;
    char *high = a > b ? a : b, *low = a > b ? b : a;
    char *stacks[2] = {higher ? high : low, higher ? low : high};
    co_depth = depth;
    co_result[0] = co_result[1] = 0;
    for (long i = 0; i < rounds; i++) {
        for (int c = 0; c < 2; c++) {
            getcontext(&co_ctx[c]);
            co_ctx[c].uc_stack.ss_sp = stacks[c];
            co_ctx[c].uc_stack.ss_size = size;
            co_ctx[c].uc_link = &co_main;
            makecontext(&co_ctx[c], (void (*)(void))co_body, 1, c);
        }
        static const int order[4] = {0, 1, 0, 1};
        for (int k = 0; k < 4; k++) {
            co_current = order[k];
            swapcontext(&co_main, &co_ctx[order[k]]);
        }
    }
    munmap(a - 4096, size + 4096);
    munmap(b - 4096, size + 4096);
    return co_result[0] * 1000 + co_result[1];
}

/* A coroutine (ucontext) that recurses `depth` deep with fxc_mig_rec, whose bottom suspends it
 * back to the calling thread, and is then resumed by a new thread, on which every frame
 * returns. fxc_mig_rec(n) = n; fxc_co_migrate returns rounds * depth, or -1 when a stack or a
 * thread could not be made. */
long fxc_mig_rec(long n);
static long (*volatile mig_again)(long) = fxc_mig_rec;
static ucontext_t mig_home, mig_ctx, mig_other;
static long mig_depth, mig_result;
__attribute__((noinline, noipa)) long fxc_mig_rec(long n) {
    if (n == 0) {
        swapcontext(&mig_ctx, &mig_home);
        return 0;
    }
    return mig_again(n - 1) + 1;
}
static void mig_body(void) { mig_result += fxc_mig_rec(mig_depth); }
static void *mig_resume(void *arg) {
    (void)arg;
    swapcontext(&mig_other, &mig_ctx);
    return NULL;
}
long fxc_co_migrate(long rounds, long depth) {
    const size_t size = 256 * 1024;
    char *stack = co_stack(size);
    if (!stack)
        return -1;
    mig_depth = depth;
    mig_result = 0;
    for (long i = 0; i < rounds; i++) {
        getcontext(&mig_ctx);
        mig_ctx.uc_stack.ss_sp = stack;
        mig_ctx.uc_stack.ss_size = size;
        mig_ctx.uc_link = &mig_other;
        makecontext(&mig_ctx, (void (*)(void))mig_body, 0);
        swapcontext(&mig_home, &mig_ctx);
        pthread_t t;
        if (pthread_create(&t, NULL, mig_resume, NULL) || pthread_join(t, NULL))
            return -1;
    }
    munmap(stack - 4096, size + 4096);
    return mig_result;
}
