//! A probed instruction that faults (a load from a page the program protected, a store to an
//! address with no mapping): the program's `SIGSEGV` handler sees the fault as untraced (the
//! signal's code and address, the faulting instruction's address in its context), fixes it or
//! skips the instruction, and the program goes on; each call is one hit, in each engine.
mod common;

use std::process::Command;

use common::{c_program_from, hits, trace_to_file};

const SOURCE: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <ucontext.h>
#include <sys/mman.h>
static char *page;
__attribute__((noinline)) int load(int *p) { return *p; }
__attribute__((noinline)) void store(void) { *(volatile int *)0x1234 = 5; }
static int signals;
static void on_segv(int sig, siginfo_t *si, void *context) {
    ucontext_t *uc = context;
    if (++signals > 4)
        _exit(3); /* a fault the handler cannot get past: not as untraced */
    void *rip = (void *)uc->uc_mcontext.gregs[REG_RIP];
    const char *where = rip == (void *)load ? "load" : rip == (void *)store ? "store" : "elsewhere";
    const char *addr = si->si_addr == page ? "page" : si->si_addr == (void *)0x1234 ? "0x1234" : "other";
    printf("signal %d code %d at %s in %s\n", sig, si->si_code, addr, where);
    if (rip == (void *)store)
        uc->uc_mcontext.gregs[REG_RIP] += 11; /* past `movl $5, 0x1234` */
    else
        mprotect(page, 4096, PROT_READ | PROT_WRITE);
}
int main(void) {
    page = mmap(0, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, 0);
    printf("read %d\n", load((int *)page));
    store();
    printf("done\n");
    return 0;
}
"#;

#[test]
fn a_probed_instruction_that_faults_is_seen_by_the_program_s_handler_as_untraced() {
    let program = c_program_from("probed-faults", SOURCE, &["-O1"]);
    let untraced = Command::new(program).output().unwrap();
    assert!(untraced.status.success());
    let expected = String::from_utf8(untraced.stdout).unwrap();
    assert!(
        expected.contains("code 2 at page in load") && expected.contains("code 1 at 0x1234 in store"),
        "{expected}"
    );
    for engine in ["ptrace", "agent"] {
        let args = ["--engine", engine, "-c", "probed-faults:load", "probed-faults:store", "--", program];
        let t = trace_to_file(&format!("probed-faults-{engine}"), &args);
        assert_eq!(t.code, Some(0), "{}", t.what(engine));
        assert_eq!(t.stdout, expected, "{engine}: the handler saw what it sees untraced");
        let figures = (hits(&t.trace, "probed-faults:load"), hits(&t.trace, "probed-faults:store"));
        assert_eq!(figures, (1, 1), "{engine}: one hit a call\n{}", t.trace);
    }
}
