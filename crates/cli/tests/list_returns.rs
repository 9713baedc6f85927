//! `dprobe list FILE FUNCTION+0`: how a return probe would watch the function's returns, and
//! why when it must replace the return address.
mod common;

use common::{dprobe, target};

fn listed(place: &str) -> String {
    let o = dprobe(&["list", target(), place]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn list_says_at_which_exits_returns_are_watched_or_why_not() {
    // tail_outer is `add $1,%rdi; jmp tail_inner`: its one exit is the tail call.
    let out = listed("tail_outer+0");
    assert!(
        out.contains("a return probe (ptrace, agent) watches its returns at its 1 exit (ret, tail calls)"),
        "{out}"
    );
    // The kernel engine too, from the file; the value of a tail call is the callee's.
    let kernel = "a return probe (kernel, -a) watches its returns at its 1 exit (ret, tail calls): the stack is not \
                  touched; a $retval or --latency at a tail call is read where the callee returns, at the exits \
                  of tail_inner";
    assert!(out.contains(kernel), "{out}");
    // own_return leaves by its rets (how many is the compiler's choice).
    let out = listed("own_return+0");
    assert!(out.contains("watches its returns at its ") && out.contains(" exits (ret, tail calls)"), "{out}");
    // main holds an int3 of its own (the program traps itself in one of its modes): the
    // instruction it hides could be a way out.
    let out = listed("main+0");
    assert!(
        out.contains("watches its returns through the return address, because its exits are not all known: an int3 at"),
        "{out}"
    );
    let kernel = "a return probe (kernel, -a) watches its returns through the return address (a uretprobe): its \
                  exits are not all known: an int3 at";
    assert!(out.contains(kernel), "{out}");
    // Not at an entry: nothing about returns.
    let out = listed("tail_outer+4");
    assert!(!out.contains("return probe"), "{out}");
}
