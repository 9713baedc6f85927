//! The system calls dprobe makes a thread of the program make (`inject.rs`: the out-of-line
//! page's `mmap`, `rt_sigaction`) go through the seccomp filters that thread runs under. A
//! filter made for the program may kill it for a call the program itself never makes (an
//! `mmap` with `SECCOMP_RET_KILL_PROCESS`): a plain attach killed such a program with
//! `SIGSYS`. So the thread's filters are read (`PTRACE_SECCOMP_GET_FILTER`) and run here on
//! the call dprobe is about to make, as the kernel would run them (the same classic BPF, on
//! the same `seccomp_data`: the call's number, the architecture, the address after the
//! `syscall` instruction, the arguments); the call is made only where every filter allows it
//! (`SECCOMP_RET_ALLOW`, `SECCOMP_RET_LOG`). Otherwise it is not made, and dprobe says why: a
//! filter's answer of an error number would only make it fail, every other (killing the
//! thread or the process, a `SIGSYS`, a tracer's or a supervisor's turn) would act on the
//! program.
//!
//! A thread in strict mode may make no such call. Filters that cannot be read (dprobe without
//! `CAP_SYS_ADMIN` in the first user namespace, as any user but root; or under a filter itself;
//! or a kernel without the request) are taken as refusing, the program's life not bet on them,
//! except in a program dprobe started that has no filter dprobe does not have: a container's,
//! which dprobe runs under too, and whose filter allows what dprobe's own process does all the
//! time. And except for `getpid`, whose result dprobe never uses (a step that gives a signal
//! back to the thread's queue): an error for it harms nothing, and no filter kills for it.

use crate::error::TraceError;
use crate::proc_ids::{descends_from_this_process, seccomp_status};
use crate::sys;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub(crate) code: u16,
    pub(crate) jt: u8,
    pub(crate) jf: u8,
    pub(crate) k: u32,
}

impl Insn {
    /// From the 8 bytes of a `struct sock_filter`.
    pub(crate) fn from_bytes(b: [u8; 8]) -> Insn {
        Insn {
            code: u16::from_le_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// What a thread runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seccomp {
    /// No filter.
    Off,
    /// Strict mode: `read`, `write`, `_exit` and `sigreturn` only.
    Strict,
    /// Filters, each a program of classic BPF.
    Filters(Vec<Vec<Insn>>),
}

/// `AUDIT_ARCH_X86_64`.
const ARCH_X86_64: u32 = 0xc000_003e;
/// The size of `struct seccomp_data`.
const DATA_BYTES: u32 = 64;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const ACTION: u32 = 0xffff_0000;

/// Whether thread `tid` of process `pid` may make system call `nr` with `args` from the
/// `syscall` instruction at `at` without its seccomp filters acting on the program (see the
/// module's comment); `call` names it for the message.
pub(crate) fn allows(pid: i32, tid: i32, nr: u64, args: [u64; 6], at: u64) -> Result<(), TraceError> {
    let call = call_name(nr);
    let refused = |why: String| Err(TraceError::Seccomp { pid, call, why });
    if nr == libc::SYS_getpid as u64 {
        return Ok(());
    }
    match sys::seccomp(pid, tid) {
        Ok(Seccomp::Off) => Ok(()),
        Ok(Seccomp::Strict) => refused("it runs in seccomp's strict mode".into()),
        Err(_) if inherited_from_dprobe(pid, tid) => Ok(()),
        Err(why) => refused(format!("it runs under a seccomp filter that dprobe cannot read ({why})")),
        Ok(Seccomp::Filters(filters)) => {
            let data = seccomp_data(nr, args, at + 2);
            match verdict(&filters, &data) {
                Some(r) if matches!(r & ACTION, RET_ALLOW | RET_LOG) => Ok(()),
                Some(r) => refused(format!("its seccomp filter would {}", action_in_words(r))),
                None => refused("its seccomp filter uses an instruction dprobe does not know".into()),
            }
        }
    }
}

/// Whether thread `tid` of process `pid`, a process dprobe started (or one of its
/// descendants), runs under no more filters than dprobe itself (see the module's comment).
fn inherited_from_dprobe(pid: i32, tid: i32) -> bool {
    let (Some((2, Some(theirs))), Some((2, Some(own)))) =
        (seccomp_status(&format!("/proc/{tid}/status")), seccomp_status("/proc/self/status"))
    else {
        return false;
    };
    theirs <= own && descends_from_this_process(pid)
}

/// The name of system call `nr`, among those dprobe makes.
fn call_name(nr: u64) -> &'static str {
    match nr as libc::c_long {
        libc::SYS_mmap => "mmap",
        libc::SYS_munmap => "munmap",
        libc::SYS_mprotect => "mprotect",
        libc::SYS_rt_sigaction => "rt_sigaction",
        libc::SYS_rt_sigprocmask => "rt_sigprocmask",
        libc::SYS_getpid => "getpid",
        _ => "a system call",
    }
}

fn action_in_words(r: u32) -> String {
    match r & ACTION {
        RET_KILL_PROCESS => "kill the process".into(),
        RET_KILL_THREAD => "kill the thread".into(),
        RET_TRAP => "send it SIGSYS".into(),
        RET_ERRNO => format!("refuse it (error {})", r & 0xffff),
        RET_USER_NOTIF => "hand it to a supervisor".into(),
        RET_TRACE => "make it fail, no tracer taking it".into(),
        other => format!("answer {other:#x}"),
    }
}

/// `struct seccomp_data` for system call `nr` with `args`, made from `ip` (the address after
/// the `syscall` instruction), as 32-bit words.
fn seccomp_data(nr: u64, args: [u64; 6], ip: u64) -> [u32; 16] {
    let mut w = [0u32; 16];
    (w[0], w[1], w[2], w[3]) = (nr as u32, ARCH_X86_64, ip as u32, (ip >> 32) as u32);
    for (i, a) in args.iter().enumerate() {
        (w[4 + 2 * i], w[5 + 2 * i]) = (*a as u32, (*a >> 32) as u32);
    }
    w
}

/// What the filters (oldest first, as `PTRACE_SECCOMP_GET_FILTER` numbers them) answer
/// together: the answer of highest precedence, the newest filter's among equals (the kernel
/// runs them newest first and compares the actions as signed numbers, the lowest winning);
/// `None` where a filter cannot be run.
fn verdict(filters: &[Vec<Insn>], data: &[u32; 16]) -> Option<u32> {
    let mut answer = RET_ALLOW;
    for f in filters.iter().rev() {
        let r = run(f, data)?;
        if ((r & ACTION) as i32) < ((answer & ACTION) as i32) {
            answer = r;
        }
    }
    Some(answer)
}

/// Run one filter on `data` as the kernel's classic BPF does (the instructions seccomp
/// accepts); `None` for any other, or a program that runs off its end.
fn run(program: &[Insn], data: &[u32; 16]) -> Option<u32> {
    let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    loop {
        let i = *program.get(pc)?;
        pc += 1;
        let k = i.k;
        match i.code {
            // BPF_LD | BPF_W | BPF_ABS: a word of `seccomp_data`.
            0x20 => a = *data.get((k / 4) as usize).filter(|_| k % 4 == 0 && k < DATA_BYTES)?,
            // BPF_LD | BPF_W | BPF_LEN, BPF_LDX | BPF_W | BPF_LEN.
            0x80 => a = DATA_BYTES,
            0x81 => x = DATA_BYTES,
            // BPF_LD | BPF_IMM, BPF_LDX | BPF_IMM.
            0x00 => a = k,
            0x01 => x = k,
            // BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM, BPF_ST, BPF_STX.
            0x60 => a = *mem.get(k as usize)?,
            0x61 => x = *mem.get(k as usize)?,
            0x02 => *mem.get_mut(k as usize)? = a,
            0x03 => *mem.get_mut(k as usize)? = x,
            // BPF_RET | BPF_K, BPF_RET | BPF_A.
            0x06 => return Some(k),
            0x16 => return Some(a),
            // BPF_MISC | BPF_TAX, BPF_MISC | BPF_TXA.
            0x07 => x = a,
            0x87 => a = x,
            // BPF_ALU | BPF_NEG.
            0x84 => a = a.wrapping_neg(),
            code if code & 0x07 == 0x04 => {
                let v = if code & 0x08 != 0 { x } else { k };
                a = match code & 0xf0 {
                    0x00 => a.wrapping_add(v),
                    0x10 => a.wrapping_sub(v),
                    0x20 => a.wrapping_mul(v),
                    // A division by zero ends the filter with 0 (kill the thread).
                    0x30 | 0x90 if v == 0 => return Some(0),
                    0x30 => a / v,
                    0x90 => a % v,
                    0x40 => a | v,
                    0x50 => a & v,
                    // The count taken modulo 32, as the kernel's interpreter and JIT do.
                    0x60 => a.wrapping_shl(v),
                    0x70 => a.wrapping_shr(v),
                    0xa0 => a ^ v,
                    _ => return None,
                };
            }
            code if code & 0x07 == 0x05 => {
                let v = if code & 0x08 != 0 { x } else { k };
                let taken = match code & 0xf0 {
                    // BPF_JA: `k` forward, whatever.
                    0x00 => {
                        pc = pc.checked_add(k as usize)?;
                        continue;
                    }
                    0x10 => a == v,
                    0x20 => a > v,
                    0x30 => a >= v,
                    0x40 => a & v != 0,
                    _ => return None,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u16, k: u32) -> Insn {
        Insn { code, jt: 0, jf: 0, k }
    }

    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }

    /// Kill the process for `mmap`, allow the rest (as the program that was killed did).
    fn kill_mmap() -> Vec<Insn> {
        vec![
            stmt(0x20, 0),
            jump(0x15, libc::SYS_mmap as u32, 0, 1),
            stmt(0x06, RET_KILL_PROCESS),
            stmt(0x06, RET_ALLOW),
        ]
    }

    #[test]
    fn a_filter_that_kills_for_mmap_refuses_it_and_allows_the_rest() {
        let mmap = seccomp_data(libc::SYS_mmap as u64, [0, 4096, 7, 0x22, u64::MAX, 0], 0x7f00_0000_1002);
        let getpid = seccomp_data(libc::SYS_getpid as u64, [0; 6], 0x7f00_0000_1002);
        assert_eq!(verdict(&[kill_mmap()], &mmap), Some(RET_KILL_PROCESS));
        assert_eq!(verdict(&[kill_mmap()], &getpid), Some(RET_ALLOW));
        assert_eq!(verdict(&[], &mmap), Some(RET_ALLOW), "no filter allows");
    }

    #[test]
    fn of_two_filters_the_answer_of_highest_precedence_wins() {
        let errno_for_all = vec![stmt(0x06, RET_ERRNO | 1)];
        let log_all = vec![stmt(0x06, RET_LOG)];
        let mmap = seccomp_data(libc::SYS_mmap as u64, [0; 6], 0);
        assert_eq!(verdict(&[log_all.clone(), errno_for_all.clone()], &mmap), Some(RET_ERRNO | 1));
        assert_eq!(verdict(&[errno_for_all, kill_mmap()], &mmap), Some(RET_KILL_PROCESS), "kill process over errno");
        assert_eq!(verdict(&[log_all, vec![stmt(0x06, RET_KILL_THREAD)]], &mmap), Some(RET_KILL_THREAD));
        let errno_2 = vec![stmt(0x06, RET_ERRNO | 2)];
        assert_eq!(
            verdict(&[vec![stmt(0x06, RET_ERRNO | 1)], errno_2], &mmap),
            Some(RET_ERRNO | 2),
            "the newest (last) among equals"
        );
    }

    /// The architecture check, an argument's high word and the instruction pointer, as
    /// libseccomp's filters read them, and a filter that ends badly.
    #[test]
    fn words_of_the_data_and_arithmetic_are_the_kernels() {
        let arch_then_high_arg = vec![
            stmt(0x20, 4),
            jump(0x15, ARCH_X86_64, 1, 0),
            stmt(0x06, RET_KILL_PROCESS),
            // args[1] >> 32 (offset 16 + 8 + 4): 1 for 4 GiB.
            stmt(0x20, 28),
            stmt(0x04, 1),
            stmt(0x02, 3),
            stmt(0x61, 3),
            stmt(0x87, 0),
            jump(0x15, 2, 0, 1),
            stmt(0x06, RET_ERRNO | 12),
            // The instruction pointer's low word.
            stmt(0x20, 8),
            stmt(0x16, 0),
        ];
        let big = seccomp_data(libc::SYS_mmap as u64, [0, 1 << 32, 0, 0, 0, 0], 0x1234);
        assert_eq!(run(&arch_then_high_arg, &big), Some(RET_ERRNO | 12));
        let small = seccomp_data(libc::SYS_mmap as u64, [0, 4096, 0, 0, 0, 0], 0x7fff_0000);
        assert_eq!(run(&arch_then_high_arg, &small), Some(0x7fff_0000), "the address read, returned as is");
        assert_eq!(run(&[stmt(0x20, 2)], &small), None, "an unaligned load");
        assert_eq!(run(&[stmt(0x20, 0)], &small), None, "off the end");
        assert_eq!(run(&[stmt(0x01, 0), stmt(0x3c, 0), stmt(0x06, RET_ALLOW)], &small), Some(0), "A / X with X = 0");
        assert_eq!(run(&[stmt(0xc6, 0)], &small), None, "an unknown instruction");
        // A shift by X of 33 shifts by 1.
        assert_eq!(run(&[stmt(0x00, 3), stmt(0x01, 33), stmt(0x6c, 0), stmt(0x16, 0)], &small), Some(6));
        assert_eq!(run(&[stmt(0x00, 6), stmt(0x01, 33), stmt(0x7c, 0), stmt(0x16, 0)], &small), Some(3));
    }
}
