//! When the law lets us call: Colombia's holidays and the calling window.

pub mod holidays;
pub mod window;

pub use window::{CallingWindow, Closed};

/// The current wall-clock time in `tz`, to the second (the precision the
/// call log stores).
pub fn local_now(tz: chrono_tz::Tz) -> chrono::NaiveDateTime {
    use chrono::Timelike;
    let now = chrono::Utc::now().with_timezone(&tz).naive_local();
    now.with_nanosecond(0).unwrap_or(now)
}
