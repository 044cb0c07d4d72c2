//! The legal calling window (README "Who is called"; Ley 2300 de 2023 art. 3).
//!
//! Default: Monday–Friday 07:00–19:00, Saturday 08:00–15:00, never on
//! Sundays or Colombian public holidays. Start is inclusive and end is
//! exclusive, so 19:00:00 is already closed. Every decision is taken on the
//! wall clock of the configured time zone, never the host's.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};

use super::holidays::is_colombian_holiday;

/// Opening hours of one kind of day, `start <= t < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    #[serde(deserialize_with = "hh_mm")]
    pub start: NaiveTime,
    #[serde(deserialize_with = "hh_mm")]
    pub end: NaiveTime,
}

impl Hours {
    fn hm(start: (u32, u32), end: (u32, u32)) -> Hours {
        let t = |(h, m)| NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN);
        Hours {
            start: t(start),
            end: t(end),
        }
    }

    fn contains(&self, t: NaiveTime) -> bool {
        self.start <= t && t < self.end
    }
}

/// "07:00" or "07:00:00".
fn hh_mm<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
    let s = String::deserialize(d)?;
    NaiveTime::parse_from_str(&s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(&s, "%H:%M:%S"))
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "expected a time of day like \"07:00\", found {s:?}"
            ))
        })
}

/// When calls may be originated. Days without hours are closed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallingWindow {
    /// Monday to Friday.
    pub weekdays: Option<Hours>,
    pub saturday: Option<Hours>,
    pub sunday: Option<Hours>,
    /// Close on Colombia's public holidays (computed, see `holidays`).
    pub colombian_holidays: bool,
    /// Further closed dates (company holidays, 24 and 31 December …).
    pub extra_closed_days: Vec<NaiveDate>,
}

impl Default for CallingWindow {
    fn default() -> Self {
        CallingWindow {
            weekdays: Some(Hours::hm((7, 0), (19, 0))),
            saturday: Some(Hours::hm((8, 0), (15, 0))),
            sunday: None,
            colombian_holidays: true,
            extra_closed_days: Vec::new(),
        }
    }
}

/// Why the window is closed at a given moment, for operators and `preview`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Holiday,
    ClosedDay,
    OutsideHours,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Closed::Holiday => "public holiday",
            Closed::ClosedDay => "no calls on this day of the week",
            Closed::OutsideHours => "outside calling hours",
        })
    }
}

impl CallingWindow {
    fn hours_for(&self, date: NaiveDate) -> Option<Hours> {
        match date.weekday() {
            Weekday::Sat => self.saturday,
            Weekday::Sun => self.sunday,
            _ => self.weekdays,
        }
    }

    fn is_closed_day(&self, date: NaiveDate) -> bool {
        (self.colombian_holidays && is_colombian_holiday(date))
            || self.extra_closed_days.contains(&date)
    }

    /// Is a call allowed at this local wall-clock time?
    pub fn check_local(&self, local: NaiveDateTime) -> Result<(), Closed> {
        if self.is_closed_day(local.date()) {
            return Err(Closed::Holiday);
        }
        match self.hours_for(local.date()) {
            None => Err(Closed::ClosedDay),
            Some(h) if h.contains(local.time()) => Ok(()),
            Some(_) => Err(Closed::OutsideHours),
        }
    }

    /// Is a call allowed at this instant, judged in `tz`?
    pub fn check(&self, instant: DateTime<Utc>, tz: Tz) -> Result<(), Closed> {
        self.check_local(tz.from_utc_datetime(&instant.naive_utc()).naive_local())
    }

    /// The next local moment at or after `from` when the window is open, looking
    /// at most a year ahead (a window that never opens is a configuration
    /// mistake that `None` lets the caller report).
    pub fn next_open(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        if self.check_local(from).is_ok() {
            return Some(from);
        }
        let mut date = from.date();
        for _ in 0..=366 {
            if !self.is_closed_day(date) {
                if let Some(h) = self.hours_for(date) {
                    let start = date.and_time(h.start);
                    if start >= from && h.start < h.end {
                        return Some(start);
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    /// Bogotá is UTC−5 all year (no DST), which is what the UTC cases rely on.
    fn utc(s: &str) -> DateTime<Utc> {
        at(s).and_utc()
    }

    #[test]
    fn edges_on_a_weekday() {
        let w = CallingWindow::default();
        // Friday 2026-11-20.
        assert_eq!(
            w.check_local(at("2026-11-20 06:59:59")),
            Err(Closed::OutsideHours)
        );
        assert_eq!(w.check_local(at("2026-11-20 07:00:00")), Ok(()));
        assert_eq!(w.check_local(at("2026-11-20 18:59:59")), Ok(()));
        assert_eq!(
            w.check_local(at("2026-11-20 19:00:00")),
            Err(Closed::OutsideHours)
        );
    }

    #[test]
    fn saturday_sunday_and_holidays() {
        let w = CallingWindow::default();
        assert_eq!(
            w.check_local(at("2026-11-21 07:59:59")),
            Err(Closed::OutsideHours)
        );
        assert_eq!(w.check_local(at("2026-11-21 08:00:00")), Ok(()));
        assert_eq!(w.check_local(at("2026-11-21 14:59:59")), Ok(()));
        assert_eq!(
            w.check_local(at("2026-11-21 15:00:00")),
            Err(Closed::OutsideHours)
        );
        for h in 0..24 {
            let sunday = at("2026-11-22 00:00:00") + chrono::Duration::hours(h);
            assert_eq!(w.check_local(sunday), Err(Closed::ClosedDay));
            // Monday 16 Nov 2026 is a holiday (Independence of Cartagena, moved).
            let holiday = at("2026-11-16 00:00:00") + chrono::Duration::hours(h);
            assert_eq!(w.check_local(holiday), Err(Closed::Holiday));
        }
        // A holiday that falls on a Saturday still closes it.
        assert_eq!(
            w.check_local(at("2026-08-07 10:00:00")),
            Err(Closed::Holiday)
        );
    }

    #[test]
    fn instants_are_judged_in_bogota() {
        let w = CallingWindow::default();
        let tz: Tz = "America/Bogota".parse().unwrap();
        // 12:00 UTC = 07:00 Bogotá; 23:59 UTC = 18:59 Bogotá; 00:00 UTC = 19:00.
        assert_eq!(
            w.check(utc("2026-11-20 11:59:59"), tz),
            Err(Closed::OutsideHours)
        );
        assert_eq!(w.check(utc("2026-11-20 12:00:00"), tz), Ok(()));
        assert_eq!(w.check(utc("2026-11-20 23:59:59"), tz), Ok(()));
        assert_eq!(
            w.check(utc("2026-11-21 00:00:00"), tz),
            Err(Closed::OutsideHours)
        );
        // Sunday 03:00 UTC is still Saturday 22:00 in Bogotá: closed for hours, not as Sunday.
        assert_eq!(
            w.check(utc("2026-11-22 03:00:00"), tz),
            Err(Closed::OutsideHours)
        );
    }

    /// The same checks with the process in Tokyo's time zone: nothing above
    /// may depend on the host's zone. Re-runs this test binary with TZ set.
    #[test]
    fn host_time_zone_does_not_matter() {
        if std::env::var("TZ").as_deref() == Ok("Asia/Tokyo") {
            return; // We are the child.
        }
        let exe = std::env::current_exe().unwrap();
        for name in [
            "edges_on_a_weekday",
            "instants_are_judged_in_bogota",
            "saturday_sunday_and_holidays",
        ] {
            let out = std::process::Command::new(&exe)
                .args([
                    &format!("rules::window::tests::{name}"),
                    "--exact",
                    "--test-threads=1",
                ])
                .env("TZ", "Asia/Tokyo")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name} failed under TZ=Asia/Tokyo:\n{stdout}"
            );
            assert!(
                stdout.contains("1 passed"),
                "{name} did not run under TZ=Asia/Tokyo:\n{stdout}"
            );
        }
    }

    #[test]
    fn next_open_skips_closed_days() {
        let w = CallingWindow::default();
        // Saturday 21 Nov 2026 15:00 → Monday 23 Nov 07:00.
        assert_eq!(
            w.next_open(at("2026-11-21 15:00:00")),
            Some(at("2026-11-23 07:00:00"))
        );
        // Friday 19:00 before a holiday Monday (2026-11-13 → 16 is a holiday) → Saturday 08:00.
        assert_eq!(
            w.next_open(at("2026-11-13 19:00:00")),
            Some(at("2026-11-14 08:00:00"))
        );
        assert_eq!(
            w.next_open(at("2026-11-14 15:00:00")),
            Some(at("2026-11-17 07:00:00"))
        );
        assert_eq!(
            w.next_open(at("2026-11-20 10:00:00")),
            Some(at("2026-11-20 10:00:00"))
        );
        let never = CallingWindow {
            weekdays: None,
            saturday: None,
            ..Default::default()
        };
        assert_eq!(never.next_open(at("2026-11-20 10:00:00")), None);
    }
}
