//! The system calls a thread of a running process is found waiting in, by name, and which of
//! them it waits in holding no lock of the C library's or the loader's: a thread stopped in
//! one may be held to call `dlopen` (see `safe_place`).

/// A system call: its number, its name, and whether a thread waits in it holding no lock of the
/// C library or the loader. `futex` does not say: it may wait for a lock, and is safe only
/// inside one of the program's waits (`lock_free_wait.rs`); nor `restart_syscall`, which goes
/// on with another call. A call that does not wait may be made holding a lock.
const CALLS: [(i64, &str, bool); 35] = [
    (libc::SYS_read, "read", true),
    (libc::SYS_poll, "poll", true),
    (libc::SYS_select, "select", true),
    (libc::SYS_nanosleep, "nanosleep", true),
    (libc::SYS_pause, "pause", true),
    (libc::SYS_wait4, "wait4", true),
    (libc::SYS_epoll_wait, "epoll_wait", true),
    (libc::SYS_clock_nanosleep, "clock_nanosleep", true),
    (libc::SYS_ppoll, "ppoll", true),
    (libc::SYS_pselect6, "pselect6", true),
    (libc::SYS_epoll_pwait, "epoll_pwait", true),
    (libc::SYS_accept, "accept", true),
    (libc::SYS_accept4, "accept4", true),
    (libc::SYS_recvfrom, "recvfrom", true),
    (libc::SYS_recvmsg, "recvmsg", true),
    (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait", true),
    // Its thread blocks, while held, the signals it blocked before (the mask it returns to),
    // and waits with its own mask again once put back: the restarted call sets it.
    (libc::SYS_rt_sigsuspend, "rt_sigsuspend", true),
    (libc::SYS_waitid, "waitid", true),
    (libc::SYS_epoll_pwait2, "epoll_pwait2", true),
    (libc::SYS_semop, "semop", true),
    (libc::SYS_semtimedop, "semtimedop", true),
    (libc::SYS_msgrcv, "msgrcv", true),
    (libc::SYS_msgsnd, "msgsnd", true),
    (libc::SYS_mq_timedreceive, "mq_timedreceive", true),
    (libc::SYS_io_uring_enter, "io_uring_enter", true),
    (libc::SYS_recvmmsg, "recvmmsg", true),
    (libc::SYS_io_getevents, "io_getevents", true),
    (crate::interrupted_wait::SYS_IO_PGETEVENTS, "io_pgetevents", true),
    (libc::SYS_futex, "futex", false),
    (libc::SYS_restart_syscall, "restart_syscall", false),
    (libc::SYS_write, "write", false),
    (libc::SYS_sendto, "sendto", false),
    (libc::SYS_sendmsg, "sendmsg", false),
    (libc::SYS_connect, "connect", false),
    (libc::SYS_openat, "openat", false),
];

/// Whether a thread waits in system call `nr` holding no lock of the C library or the loader.
pub(crate) fn holds_no_lock(nr: i64) -> bool {
    CALLS.iter().any(|&(n, _, waits)| n == nr && waits)
}

/// The name of system call `nr`, where it is one a thread is often found in.
pub(crate) fn name(nr: i64) -> Option<&'static str> {
    CALLS.iter().find(|&&(n, _, _)| n == nr).map(|&(_, name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_is_listed_once() {
        for (i, (nr, name, _)) in CALLS.iter().enumerate() {
            assert!(CALLS[i + 1..].iter().all(|(n, _, _)| n != nr), "{name} twice");
        }
    }
}
