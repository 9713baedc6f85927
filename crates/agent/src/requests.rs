//! Requests from the program's threads to the agent's thread, and the bounded wait for their
//! answers.
//!
//! A program's thread that needs the agent's thread to act first (a library is being loaded,
//! an id change is coming) counts a request, rings the agent's doorbell and waits on the
//! answered count with a futex, with no call of the C library (`raw_calls`: its functions may
//! be probed). The agent's thread finds the request pending when its doorbell wakes it, acts,
//! and answers. One thread posts at a time (the loader's lock, or the poster's own word), so a
//! request's number is the asked count it left.

use std::sync::atomic::{AtomicU32, Ordering::*};

use dprobe_inproc::raw_calls;

/// How long one futex wait lasts, and how many a waiter makes at most (about two seconds in
/// all): should the agent's thread not answer, the program goes on.
const TICK: libc::timespec = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
const TICKS: usize = 20;

/// Requests asked and answered, counted (the counts wrap).
pub(crate) struct Requests {
    asked: AtomicU32,
    answered: AtomicU32,
}

impl Requests {
    pub(crate) const fn new() -> Requests {
        Requests { asked: AtomicU32::new(0), answered: AtomicU32::new(0) }
    }

    /// Count a new request; its number.
    pub(crate) fn ask(&self) -> u32 {
        self.asked.fetch_add(1, AcqRel).wrapping_add(1)
    }

    /// The number of the last request asked.
    pub(crate) fn last(&self) -> u32 {
        self.asked.load(Acquire)
    }

    /// The last request, if it waits for an answer.
    pub(crate) fn pending(&self) -> Option<u32> {
        let asked = self.asked.load(Acquire);
        (asked != self.answered.load(Acquire)).then_some(asked)
    }

    /// Answer request `asked` (and those before it), waking its waiter. Never backwards: an
    /// older answer arriving after [`Requests::answer_all`] leaves nothing pending again.
    pub(crate) fn answer(&self, asked: u32) {
        let _ = self
            .answered
            .fetch_update(AcqRel, Acquire, |answered| ((asked.wrapping_sub(answered) as i32) > 0).then_some(asked));
        raw_calls::futex_wake(&self.answered, true);
    }

    /// Answer every request asked so far (the agent's thread stops serving).
    pub(crate) fn answer_all(&self) {
        self.answer(self.asked.load(Acquire));
    }

    /// Forget the requests asked so far without waking anyone: in a forked child, the parent's
    /// requests copied with its memory are not the child's.
    pub(crate) fn forget(&self) {
        self.answered.store(self.asked.load(Acquire), Release);
    }

    /// Wait until request `asked` is answered, or `served()` says the agent's thread no longer
    /// answers, or about two seconds passed.
    pub(crate) fn wait(&self, asked: u32, served: impl Fn() -> bool) {
        for _ in 0..TICKS {
            let answered = self.answered.load(Acquire);
            if (asked.wrapping_sub(answered) as i32) <= 0 || !served() {
                return;
            }
            raw_calls::futex_wait(&self.answered, answered, &TICK, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_pending_until_answered() {
        let requests = Requests::new();
        assert_eq!(requests.pending(), None);
        let first = requests.ask();
        let second = requests.ask();
        assert_eq!(requests.pending(), Some(second));
        requests.answer(first);
        assert_eq!(requests.pending(), Some(second));
        requests.answer(second);
        assert_eq!(requests.pending(), None);
    }

    #[test]
    fn an_older_answer_does_not_reopen_requests() {
        let requests = Requests::new();
        let first = requests.ask();
        requests.ask();
        requests.answer_all();
        requests.answer(first);
        assert_eq!(requests.pending(), None);
    }

    #[test]
    fn counts_wrap() {
        let requests = Requests { asked: AtomicU32::new(u32::MAX), answered: AtomicU32::new(u32::MAX) };
        let asked = requests.ask();
        assert_eq!(asked, 0);
        assert_eq!(requests.pending(), Some(0));
        requests.answer(asked);
        assert_eq!(requests.pending(), None);
        // Answered already: no wait.
        requests.wait(asked, || true);
    }

    #[test]
    fn a_waiter_goes_on_once_answered() {
        let requests = std::sync::Arc::new(Requests::new());
        let asked = requests.ask();
        let answering = {
            let requests = requests.clone();
            std::thread::spawn(move || {
                while requests.pending().is_none() {
                    std::thread::yield_now();
                }
                requests.answer(requests.pending().unwrap());
            })
        };
        // Each futex wait that ends without the answer asks `served` once more: a waiter
        // woken by the answer asks a few times at most, one that ran out of waits, `TICKS`.
        let asked_served = std::sync::atomic::AtomicUsize::new(0);
        requests.wait(asked, || asked_served.fetch_add(1, Relaxed) < usize::MAX);
        answering.join().unwrap();
        assert_eq!(requests.pending(), None);
        assert!(asked_served.load(Relaxed) < TICKS, "the waiter ran out of waits: the answer did not wake it");
    }

    #[test]
    fn a_waiter_goes_on_when_no_longer_served() {
        let requests = Requests::new();
        let asked = requests.ask();
        requests.wait(asked, || false);
        assert_eq!(requests.pending(), Some(asked));
    }
}
