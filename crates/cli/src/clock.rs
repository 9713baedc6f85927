//! The trace's time base. Every engine stamps its events with `CLOCK_MONOTONIC`
//! nanoseconds; one pair of readings taken when tracing starts (monotonic and real time
//! together) turns any of them into wall-clock time, so that events from the kernel, from a
//! ptrace stop and from the agent's thread land on one timeline, and a change of the system
//! clock during the trace moves none of them.

use std::fmt::Write as _;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use nix::time::{clock_gettime, ClockId};

/// `clock`'s reading in nanoseconds.
fn read(clock: ClockId) -> i128 {
    // Neither clock can fail on Linux; a zero would only show as 1970.
    let t = clock_gettime(clock).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

/// How `-T` shows an event's time.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// Local wall-clock time, `HH:MM:SS.ffffff`.
    Wall,
    /// Seconds since the trace started.
    Rel,
}

/// Monotonic time to wall-clock time, from one offset taken at the start.
#[derive(Clone)]
pub struct Clock {
    /// `CLOCK_MONOTONIC` when the trace started.
    start_ns: u64,
    /// Real time minus monotonic time, in nanoseconds.
    offset_ns: i128,
    /// The local time zone (`TZ`, else `/etc/localtime`), for `HH:MM:SS`.
    zone: TimeZone,
}

impl Clock {
    /// The time base of a trace starting now.
    pub fn start() -> Clock {
        // Real time read between two monotonic readings: the offset is off by at most half
        // the time between them.
        let before = read(ClockId::CLOCK_MONOTONIC);
        let real = read(ClockId::CLOCK_REALTIME);
        let after = read(ClockId::CLOCK_MONOTONIC);
        let middle = before + (after - before) / 2;
        Clock::from_parts(middle as u64, real - middle, TimeZone::system())
    }

    /// A time base from its parts: the start's monotonic time, real minus monotonic time.
    pub fn from_parts(start_ns: u64, offset_ns: i128, zone: TimeZone) -> Clock {
        Clock { start_ns, offset_ns, zone }
    }

    /// Seconds from the start to `time_ns` (negative for an event recorded just before).
    pub fn relative(&self, time_ns: u64) -> f64 {
        (i128::from(time_ns) - i128::from(self.start_ns)) as f64 / 1e9
    }

    /// The wall-clock instant of monotonic `time_ns`.
    pub fn wall(&self, time_ns: u64) -> Timestamp {
        Timestamp::from_nanosecond(i128::from(time_ns) + self.offset_ns).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// `time_ns` as RFC 3339 in UTC, to the nanosecond (`2026-11-29T19:20:00.123456789Z`).
    pub fn rfc3339(&self, time_ns: u64, out: &mut String) {
        let _ = write!(out, "{:.9}", self.wall(time_ns));
    }

    /// `time_ns` as `-T` shows it, followed by a space.
    pub fn show(&self, format: TimeFormat, time_ns: u64, out: &mut String) {
        match format {
            TimeFormat::Rel => {
                let _ = write!(out, "{:.6} ", self.relative(time_ns));
            }
            TimeFormat::Wall => {
                let t = self.zone.to_datetime(self.wall(time_ns));
                let _ = write!(
                    out,
                    "{:02}:{:02}:{:02}.{:06} ",
                    t.hour(),
                    t.minute(),
                    t.second(),
                    t.subsec_nanosecond() / 1000
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-29T19:20:00Z at monotonic 5 s.
    fn clock(zone: TimeZone) -> Clock {
        let real_ns = 1_795_980_000i128 * 1_000_000_000;
        Clock::from_parts(5_000_000_000, real_ns - 5_000_000_000, zone)
    }

    #[test]
    fn wall_time_is_the_monotonic_time_plus_the_starts_offset() {
        let c = clock(TimeZone::UTC);
        let mut s = String::new();
        c.rfc3339(5_000_000_000 + 1_234_567_891, &mut s);
        assert_eq!(s, "2026-11-29T19:20:01.234567891Z");
        s.clear();
        c.show(TimeFormat::Wall, 5_000_000_000 + 1_234_567_891, &mut s);
        assert_eq!(s, "19:20:01.234567 ");
        s.clear();
        c.show(TimeFormat::Rel, 5_000_000_000 + 1_234_567_891, &mut s);
        assert_eq!(s, "1.234568 ");
        assert_eq!(c.relative(4_999_000_000), -0.001, "an event just before the start");
    }

    #[test]
    fn local_time_follows_the_zones_rules() {
        // New York in late November: standard time, 5 hours behind UTC.
        let zone = jiff::tz::TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        let mut s = String::new();
        clock(zone.clone()).show(TimeFormat::Wall, 5_000_000_000, &mut s);
        assert_eq!(s, "14:20:00.000000 ");
        // In July: daylight time, 4 hours behind.
        let july = Clock::from_parts(0, 1_783_020_000i128 * 1_000_000_000, zone);
        s.clear();
        july.show(TimeFormat::Wall, 0, &mut s);
        assert_eq!(s, "15:20:00.000000 ", "2026-07-02T19:20:00Z");
    }
}
