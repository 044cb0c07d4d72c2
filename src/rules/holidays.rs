//! Colombia's public holidays, computed for any year (README "Who is called").
//!
//! Fixed dates, the "Ley Emiliani" feasts moved to the following Monday
//! (Ley 51 de 1983), and the Easter-based ones. Computing them, rather than
//! shipping a list, means the daemon cannot run out of calendar.

use chrono::{Datelike, Duration, NaiveDate, Weekday};

/// Easter Sunday (Gregorian), by the anonymous Gregorian algorithm
/// (Meeus/Jones/Butcher).
pub fn easter_sunday(year: i32) -> Option<NaiveDate> {
    let a = year.rem_euclid(19);
    let b = year.div_euclid(100);
    let c = year.rem_euclid(100);
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15).rem_euclid(30);
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k).rem_euclid(7);
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    NaiveDate::from_ymd_opt(year, month as u32, day as u32)
}

/// The date itself if it is a Monday, otherwise the following Monday.
fn next_monday(date: NaiveDate) -> NaiveDate {
    let ahead = (7 - date.weekday().num_days_from_monday()) % 7;
    date + Duration::days(i64::from(ahead))
}

/// Every public holiday of `year`, sorted, without duplicates (in 2025 two
/// feasts share June 30).
pub fn colombian_holidays(year: i32) -> Vec<NaiveDate> {
    let ymd = |m, d| NaiveDate::from_ymd_opt(year, m, d);
    let mut days: Vec<NaiveDate> = Vec::with_capacity(18);
    // Fixed.
    days.extend(
        [(1, 1), (5, 1), (7, 20), (8, 7), (12, 8), (12, 25)]
            .iter()
            .filter_map(|&(m, d)| ymd(m, d)),
    );
    // Moved to the following Monday.
    days.extend(
        [
            (1, 6),
            (3, 19),
            (6, 29),
            (8, 15),
            (10, 12),
            (11, 1),
            (11, 11),
        ]
        .iter()
        .filter_map(|&(m, d)| ymd(m, d))
        .map(next_monday),
    );
    // Easter-based: Holy Thursday and Good Friday stay put; Ascension,
    // Corpus Christi and Sacred Heart are Mondays by construction (E+43,
    // E+64, E+71 from a Sunday).
    if let Some(easter) = easter_sunday(year) {
        days.extend(
            [-3i64, -2, 43, 64, 71]
                .iter()
                .map(|&n| easter + Duration::days(n)),
        );
    }
    days.sort();
    days.dedup();
    days
}

/// Is `date` a Colombian public holiday?
pub fn is_colombian_holiday(date: NaiveDate) -> bool {
    colombian_holidays(date.year()).binary_search(&date).is_ok()
}

/// Is `date` a Sunday? (Kept here because holidays and Sundays are the two
/// kinds of day the law closes entirely.)
pub fn is_sunday(date: NaiveDate) -> bool {
    date.weekday() == Weekday::Sun
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[(u32, u32)], year: i32) -> Vec<NaiveDate> {
        list.iter()
            .map(|&(m, d)| NaiveDate::from_ymd_opt(year, m, d).unwrap())
            .collect()
    }

    #[test]
    fn vector_2026() {
        let want = parse(
            &[
                (1, 1),
                (1, 12),
                (3, 23),
                (4, 2),
                (4, 3),
                (5, 1),
                (5, 18),
                (6, 8),
                (6, 15),
                (6, 29),
                (7, 20),
                (8, 7),
                (8, 17),
                (10, 12),
                (11, 2),
                (11, 16),
                (12, 8),
                (12, 25),
            ],
            2026,
        );
        assert_eq!(colombian_holidays(2026), want);
        assert_eq!(want.len(), 18);
    }

    #[test]
    fn vector_2025_has_17_dates() {
        let want = parse(
            &[
                (1, 1),
                (1, 6),
                (3, 24),
                (4, 17),
                (4, 18),
                (5, 1),
                (6, 2),
                (6, 23),
                (6, 30),
                (7, 20),
                (8, 7),
                (8, 18),
                (10, 13),
                (11, 3),
                (11, 17),
                (12, 8),
                (12, 25),
            ],
            2025,
        );
        assert_eq!(colombian_holidays(2025), want);
    }

    #[test]
    fn easter_dates() {
        for (y, m, d) in [
            (2024, 3, 31),
            (2025, 4, 20),
            (2026, 4, 5),
            (2027, 3, 28),
            (2000, 4, 23),
            (2038, 4, 25),
        ] {
            assert_eq!(easter_sunday(y), NaiveDate::from_ymd_opt(y, m, d), "{y}");
        }
    }

    #[test]
    fn membership() {
        assert!(is_colombian_holiday(
            NaiveDate::from_ymd_opt(2026, 11, 16).unwrap()
        ));
        assert!(!is_colombian_holiday(
            NaiveDate::from_ymd_opt(2026, 11, 11).unwrap()
        ));
        assert!(is_sunday(NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()));
    }
}
