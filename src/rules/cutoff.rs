//! The cutoff-day rule (README "Who is called", check 4): on which days of a month a
//! client with a given `corte` may be reminded.
//!
//! A client is due from the day before its cut-off day to the end of the
//! month. A `corte` past the month's length is clamped to the month's last
//! day, so corte 31 in April behaves like corte 30.

use chrono::{Datelike, NaiveDate};

/// A `corte` value that cannot be a day of the month (NULL, 0, negative or
/// over 31). Such clients are skipped as bad data, never guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCorte;

/// Checks the raw column value; `None` is SQL NULL.
pub fn valid_corte(corte: Option<i64>) -> Result<u32, BadCorte> {
    match corte {
        Some(day @ 1..=31) => Ok(day as u32),
        _ => Err(BadCorte),
    }
}

/// Number of days in the month that contains `date`.
pub fn days_in_month(date: NaiveDate) -> u32 {
    let (y, m) = (date.year(), date.month());
    let first_of_next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    };
    match first_of_next.and_then(|d| d.pred_opt()) {
        Some(last) => last.day(),
        // Only reachable at chrono's far-future limit; 28 is the safe answer.
        None => 28,
    }
}

/// First day of `date`'s month on which a client with cut-off day `corte`
/// (1..=31) is due: the day before the clamped cut-off day, never before
/// the 1st.
pub fn first_due_day(date: NaiveDate, corte: u32) -> u32 {
    corte.min(days_in_month(date)).saturating_sub(1).max(1)
}

/// README "Who is called": `today` is the day before the (clamped) cut-off day,
/// the cut-off day itself, or any later day of the same month.
pub fn is_due(today: NaiveDate, corte: u32) -> bool {
    today.day() >= first_due_day(today, corte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn spec_examples() {
        assert!(!is_due(d(2026, 3, 13), 15));
        assert!(is_due(d(2026, 3, 14), 15));
        assert!(is_due(d(2026, 3, 15), 15));
        assert!(is_due(d(2026, 3, 20), 15));
        assert!(!is_due(d(2026, 3, 5), 15));
        for day in 1..=31 {
            assert!(is_due(d(2026, 3, day), 1));
        }
        assert!(is_due(d(2026, 4, 29), 31));
        assert!(is_due(d(2026, 4, 30), 31));
        assert!(!is_due(d(2026, 4, 28), 31));
        // February clamps to the 28th / 29th.
        assert!(is_due(d(2025, 2, 27), 31));
        assert!(!is_due(d(2025, 2, 26), 30));
        assert!(is_due(d(2024, 2, 28), 31));
        assert!(!is_due(d(2024, 2, 27), 31));
    }

    #[test]
    fn bad_cortes_are_rejected() {
        for bad in [
            None,
            Some(0),
            Some(-1),
            Some(-31),
            Some(32),
            Some(40),
            Some(i64::MAX),
        ] {
            assert_eq!(valid_corte(bad), Err(BadCorte), "{bad:?}");
        }
        for good in 1..=31 {
            assert_eq!(valid_corte(Some(good)), Ok(good as u32));
        }
    }

    /// Every day of a leap and a non-leap year × every corte -1..=32,
    /// against an independent statement of the rule: the client is due on
    /// the clamped cut-off day, the day before it, and every day after it
    /// in the same month.
    #[test]
    fn exhaustive_2024_and_2025() {
        let mut checked = 0;
        let mut day = d(2024, 1, 1);
        while day <= d(2025, 12, 31) {
            for raw in -1i64..=32 {
                let Ok(corte) = valid_corte(Some(raw)) else {
                    assert!(!(1..=31).contains(&raw));
                    continue;
                };
                // Independent oracle: walk the month to find the clamped cut-off date.
                let mut cutoff = day.with_day(1).unwrap();
                while cutoff.day() < corte {
                    match cutoff.succ_opt() {
                        Some(next) if next.month() == cutoff.month() => cutoff = next,
                        _ => break,
                    }
                }
                let expected = day >= cutoff || day.succ_opt() == Some(cutoff);
                assert_eq!(is_due(day, corte), expected, "{day} corte {corte}");
                checked += 1;
            }
            day = day.succ_opt().unwrap();
        }
        assert_eq!(checked, 731 * 31);
    }
}
