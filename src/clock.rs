//! Wall-clock time in the configured zone, behind a trait so that the
//! daemon's schedule can be tested with a clock that runs fast.

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use chrono_tz::Tz;

/// The current wall-clock time in `tz`, to the second (the precision the
/// call log stores). The only place the daemon reads the system clock for
/// a local time; rules take the time as an argument.
pub fn local_now(tz: Tz) -> NaiveDateTime {
    use chrono::Timelike;
    let now = chrono::Utc::now().with_timezone(&tz).naive_local();
    now.with_nanosecond(0).unwrap_or(now)
}

pub trait Clock: Send + Sync {
    /// Local time in the configured zone.
    fn now(&self) -> NaiveDateTime;
    /// How much real time passes while this clock advances by `d`.
    fn real(&self, d: chrono::Duration) -> Duration;
}

pub struct SystemClock(pub Tz);

impl Clock for SystemClock {
    fn now(&self) -> NaiveDateTime {
        crate::clock::local_now(self.0)
    }
    fn real(&self, d: chrono::Duration) -> Duration {
        d.to_std().unwrap_or_default()
    }
}

/// Starts at `start` and runs `speed` times faster than real time.
pub struct FastClock {
    began: Instant,
    start: NaiveDateTime,
    speed: f64,
}

impl FastClock {
    pub fn new(start: NaiveDateTime, speed: f64) -> FastClock {
        FastClock {
            began: Instant::now(),
            start,
            speed: speed.max(1.0),
        }
    }
}

impl Clock for FastClock {
    fn now(&self) -> NaiveDateTime {
        let elapsed = self.began.elapsed().mul_f64(self.speed);
        self.start + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
    fn real(&self, d: chrono::Duration) -> Duration {
        d.to_std().unwrap_or_default().div_f64(self.speed)
    }
}

/// A clock the caller sets by hand (tests of the schedule). The daemon
/// re-reads it every few milliseconds while it waits.
pub struct ManualClock(std::sync::Mutex<NaiveDateTime>);

impl ManualClock {
    pub fn new(start: NaiveDateTime) -> ManualClock {
        ManualClock(std::sync::Mutex::new(start))
    }

    pub fn set(&self, t: NaiveDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> NaiveDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn real(&self, _d: chrono::Duration) -> Duration {
        Duration::from_millis(5)
    }
}
