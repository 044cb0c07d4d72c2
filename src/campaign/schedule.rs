//! When `run` starts its next pass (README "Install on the PBX host"): at each scheduled time and
//! every `poll_interval` inside the calling window, never outside it.

use chrono::{Duration, NaiveDateTime, NaiveTime};

use crate::rules::window::CallingWindow;

/// The first scheduled time strictly after `t` (today or a later day).
fn next_scheduled(t: NaiveDateTime, schedule: &[NaiveTime]) -> Option<NaiveDateTime> {
    (0..=1)
        .flat_map(|day| {
            schedule
                .iter()
                .map(move |s| (t.date() + Duration::days(day)).and_time(*s))
        })
        .filter(|c| *c > t)
        .min()
}

/// The start of the next pass. `last_start` is when the previous pass began
/// (`None` at start-up: run as soon as the window allows); `now` is the
/// current local time. `None` if the window never opens.
pub fn next_start(
    now: NaiveDateTime,
    last_start: Option<NaiveDateTime>,
    schedule: &[NaiveTime],
    poll: Duration,
    window: &CallingWindow,
) -> Option<NaiveDateTime> {
    let candidate = match last_start {
        None => now,
        Some(last) => {
            let poll_at = last + poll;
            next_scheduled(last, schedule).map_or(poll_at, |s| s.min(poll_at))
        }
    };
    window.next_open(candidate.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn eight() -> Vec<NaiveTime> {
        vec![NaiveTime::from_hms_opt(8, 0, 0).unwrap()]
    }

    #[test]
    fn polls_inside_the_window_and_waits_outside() {
        let w = CallingWindow::default();
        let poll = Duration::minutes(15);
        // Start-up inside the window: at once.
        assert_eq!(
            next_start(at("2026-11-20 10:00"), None, &eight(), poll, &w),
            Some(at("2026-11-20 10:00"))
        );
        // Start-up at night: at the window's opening.
        assert_eq!(
            next_start(at("2026-11-20 22:00"), None, &eight(), poll, &w),
            Some(at("2026-11-21 08:00"))
        );
        // Every poll interval during the day.
        assert_eq!(
            next_start(
                at("2026-11-20 10:03"),
                Some(at("2026-11-20 10:00")),
                &eight(),
                poll,
                &w
            ),
            Some(at("2026-11-20 10:15"))
        );
        // A pass that overran its interval: the next one starts right away.
        assert_eq!(
            next_start(
                at("2026-11-20 10:40"),
                Some(at("2026-11-20 10:00")),
                &eight(),
                poll,
                &w
            ),
            Some(at("2026-11-20 10:40"))
        );
        // 18:50 + 15 min is past 19:00: Saturday 08:00 (Saturday hours).
        assert_eq!(
            next_start(
                at("2026-11-20 18:51"),
                Some(at("2026-11-20 18:50")),
                &eight(),
                poll,
                &w
            ),
            Some(at("2026-11-21 08:00"))
        );
        // Saturday afternoon: over Sunday to Monday 07:00.
        assert_eq!(
            next_start(
                at("2026-11-21 14:55"),
                Some(at("2026-11-21 14:50")),
                &eight(),
                poll,
                &w
            ),
            Some(at("2026-11-23 07:00"))
        );
        // Saturday 14 Nov 14:59, Monday 16 Nov is a holiday: Tuesday 07:00.
        assert_eq!(
            next_start(
                at("2026-11-14 14:59"),
                Some(at("2026-11-14 14:50")),
                &eight(),
                poll,
                &w
            ),
            Some(at("2026-11-17 07:00"))
        );
    }

    #[test]
    fn scheduled_times_come_before_a_long_poll() {
        let w = CallingWindow::default();
        let day = Duration::hours(24);
        let sched = vec![
            NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
            NaiveTime::from_hms_opt(14, 0, 0).unwrap(),
        ];
        assert_eq!(
            next_start(
                at("2026-11-20 08:05"),
                Some(at("2026-11-20 08:00")),
                &sched,
                day,
                &w
            ),
            Some(at("2026-11-20 14:00"))
        );
        assert_eq!(
            next_start(
                at("2026-11-20 14:05"),
                Some(at("2026-11-20 14:00")),
                &sched,
                day,
                &w
            ),
            Some(at("2026-11-21 08:00"))
        );
    }
}
