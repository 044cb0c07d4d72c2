//! Who gets called (README "Who is called", "Schema"): the pure decision for one flagged
//! client at one moment, with the reason when the answer is no.
//!
//! The eligibility SQL in `billing::store` is a fast pre-filter that must
//! agree with `check_client` on every client (a test proves it); phone
//! numbers and the calling window are judged here only.

use std::fmt;

use chrono::{Duration, NaiveDateTime, NaiveTime};
use serde::{Deserialize, Serialize};

use crate::rules::cutoff::{is_due, valid_corte};
use crate::rules::outcome::Outcome;
use crate::rules::phone::{normalize, Mobile};
use crate::rules::window::CallingWindow;

/// What the billing database says about one flagged client
/// (`afiliados.outbound_call = 1`), plus its history in our call log.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFacts {
    pub id: i64,
    pub telefono: Option<String>,
    /// Raw `corte`; `None` for NULL or anything that is not a number.
    pub corte: Option<i64>,
    pub is_sent: bool,
    pub attempts: u32,
    pub has_open_invoice: bool,
    /// Sum of open balances, as MySQL printed it (for display and spoken details).
    pub open_balance: Option<String>,
    pub last_attempt: Option<LastAttempt>,
    /// End of the latest delivered reminder (`overdue_call_log.delivered`).
    pub last_contact: Option<NaiveDateTime>,
    /// A row in `overdue_opt_out`: the client asked not to be called.
    pub opted_out: bool,
}

/// The client's latest row in the call log.
#[derive(Debug, Clone, PartialEq)]
pub struct LastAttempt {
    pub attempt_no: u32,
    /// `None` while the attempt is claimed and the call not finished.
    /// An outcome string we do not know reads as `Failed`.
    pub outcome: Option<Outcome>,
    pub ended_at: Option<NaiveDateTime>,
    pub phone_raw: Option<String>,
}

/// Retry delay in minutes after each failed outcome (`[retry_minutes]`).
/// `invalid_number` is never retried until the stored number changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryMinutes {
    pub busy: u32,
    pub no_answer: u32,
    pub rejected: u32,
    pub congestion: u32,
    pub failed: u32,
    pub timeout: u32,
    pub trunk_error: u32,
    /// Calls we cut ourselves (shutdown, global timeout) may go again on the next pass.
    pub aborted: u32,
    /// An answering machine took the call (README "Answering machines").
    pub voicemail: u32,
}

impl Default for RetryMinutes {
    fn default() -> Self {
        RetryMinutes {
            busy: 30,
            no_answer: 60,
            rejected: 120,
            congestion: 120,
            failed: 120,
            timeout: 120,
            trunk_error: 120,
            aborted: 0,
            voicemail: 240,
        }
    }
}

/// The knobs of the decision, from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub max_attempts: u32,
    pub min_days_between_contacts: u32,
    pub retry: RetryMinutes,
}

impl Policy {
    /// How long after `outcome` the client may be tried again.
    pub fn retry_delay(&self, outcome: Outcome) -> Duration {
        let r = &self.retry;
        let minutes = match outcome {
            Outcome::Busy => r.busy,
            Outcome::NoAnswer => r.no_answer,
            Outcome::Rejected => r.rejected,
            Outcome::Congestion => r.congestion,
            Outcome::Failed => r.failed,
            Outcome::Timeout => r.timeout,
            Outcome::TrunkError => r.trunk_error,
            Outcome::Aborted => r.aborted,
            Outcome::Voicemail => r.voicemail,
            Outcome::Completed
            | Outcome::HungUpEarly
            | Outcome::InvalidNumber
            | Outcome::Transferred
            | Outcome::OptedOut => 0,
        };
        Duration::minutes(i64::from(minutes))
    }

    /// Delivered reminders ending at or after this local time make the
    /// client "contacted recently": with 7 days, a reminder on day D blocks
    /// D..=D+6 and the client may be called again on D+7. `None` when the
    /// limit is off.
    pub fn contact_threshold(&self, now: NaiveDateTime) -> Option<NaiveDateTime> {
        let days = i64::from(self.min_days_between_contacts);
        (days > 0).then(|| (now.date() - Duration::days(days - 1)).and_time(NaiveTime::MIN))
    }
}

/// Why a flagged client is not called now. The order of the variants is
/// the order the checks run in, so each client shows its first reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The client asked not to be called (`overdue_opt_out`).
    OptedOut,
    AlreadySent,
    NoOpenInvoice,
    BadCorte,
    BeforeCutoffWindow,
    /// An attempt is claimed and its call not finished (here or on another host).
    CallInProgress,
    MaxAttempts,
    InvalidPhone,
    RetryNotDue,
    ContactedRecently,
    OutsideCallingWindow,
}

impl SkipReason {
    pub const ALL: [SkipReason; 11] = [
        SkipReason::OptedOut,
        SkipReason::AlreadySent,
        SkipReason::NoOpenInvoice,
        SkipReason::BadCorte,
        SkipReason::BeforeCutoffWindow,
        SkipReason::CallInProgress,
        SkipReason::MaxAttempts,
        SkipReason::InvalidPhone,
        SkipReason::RetryNotDue,
        SkipReason::ContactedRecently,
        SkipReason::OutsideCallingWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "opted out",
            SkipReason::AlreadySent => "already sent",
            SkipReason::NoOpenInvoice => "no open invoice",
            SkipReason::BadCorte => "bad corte",
            SkipReason::BeforeCutoffWindow => "before the cutoff window",
            SkipReason::CallInProgress => "call in progress",
            SkipReason::MaxAttempts => "max attempts",
            SkipReason::InvalidPhone => "invalid phone",
            SkipReason::RetryNotDue => "retry not due",
            SkipReason::ContactedRecently => "contacted recently",
            SkipReason::OutsideCallingWindow => "outside calling window",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// README "Who is called" and the contact-frequency limit, for one
/// client at local time `now`. This is exactly what the eligibility SQL
/// filters on; phone validity and the calling window come after.
pub fn check_client(c: &ClientFacts, now: NaiveDateTime, p: &Policy) -> Result<(), SkipReason> {
    // Before anything else: whatever the rest says, no call.
    if c.opted_out {
        return Err(SkipReason::OptedOut);
    }
    if c.is_sent {
        return Err(SkipReason::AlreadySent);
    }
    if !c.has_open_invoice {
        return Err(SkipReason::NoOpenInvoice);
    }
    let corte = valid_corte(c.corte).map_err(|_| SkipReason::BadCorte)?;
    if !is_due(now.date(), corte) {
        return Err(SkipReason::BeforeCutoffWindow);
    }
    if let Some(last) = &c.last_attempt {
        if last.outcome.is_none() {
            return Err(SkipReason::CallInProgress);
        }
    }
    if c.attempts >= p.max_attempts {
        return Err(SkipReason::MaxAttempts);
    }
    if let Some(last) = &c.last_attempt {
        // An invalid number is not tried again until staff change it.
        if last.outcome == Some(Outcome::InvalidNumber) && last.phone_raw == c.telefono {
            return Err(SkipReason::InvalidPhone);
        }
        if let (Some(outcome), Some(ended)) = (last.outcome, last.ended_at) {
            if outcome.is_retryable() && ended > now - p.retry_delay(outcome) {
                return Err(SkipReason::RetryNotDue);
            }
            // Contact was made: not twice the same day (Ley 2300), even
            // when too little was heard for the reminder to count.
            if outcome == Outcome::HungUpEarly && ended.date() >= now.date() {
                return Err(SkipReason::RetryNotDue);
            }
        }
    }
    if let (Some(contact), Some(threshold)) = (c.last_contact, p.contact_threshold(now)) {
        if contact >= threshold {
            return Err(SkipReason::ContactedRecently);
        }
    }
    Ok(())
}

/// The full decision for `preview` and for each selected client of a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Call(Mobile),
    Skip(SkipReason),
}

pub fn decide(c: &ClientFacts, now: NaiveDateTime, p: &Policy, window: &CallingWindow) -> Decision {
    if let Err(reason) = check_client(c, now, p) {
        return Decision::Skip(reason);
    }
    let Ok(mobile) = normalize(c.telefono.as_deref().unwrap_or("")) else {
        return Decision::Skip(SkipReason::InvalidPhone);
    };
    if window.check_local(now).is_err() {
        return Decision::Skip(SkipReason::OutsideCallingWindow);
    }
    Decision::Call(mobile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn policy() -> Policy {
        Policy {
            max_attempts: 3,
            min_days_between_contacts: 7,
            retry: RetryMinutes::default(),
        }
    }

    fn client() -> ClientFacts {
        ClientFacts {
            id: 1,
            telefono: Some("300 123 4567".into()),
            corte: Some(15),
            is_sent: false,
            attempts: 0,
            has_open_invoice: true,
            open_balance: Some("50000.00".into()),
            last_attempt: None,
            last_contact: None,
            opted_out: false,
        }
    }

    fn last(outcome: Option<Outcome>, ended: &str) -> Option<LastAttempt> {
        Some(LastAttempt {
            attempt_no: 1,
            outcome,
            ended_at: Some(at(ended)),
            phone_raw: Some("300 123 4567".into()),
        })
    }

    // Friday 2026-11-20 10:00, inside the window; corte 15 is due.
    const NOW: &str = "2026-11-20 10:00";

    fn check(c: &ClientFacts) -> Result<(), SkipReason> {
        check_client(c, at(NOW), &policy())
    }

    #[test]
    fn an_opted_out_client_is_never_called() {
        assert_eq!(
            check(&ClientFacts {
                opted_out: true,
                ..client()
            }),
            Err(SkipReason::OptedOut)
        );
        // Even when every other rule says call.
        assert_eq!(check(&client()), Ok(()));
    }

    #[test]
    fn each_reason() {
        let w = CallingWindow::default();
        assert_eq!(
            decide(&client(), at(NOW), &policy(), &w),
            Decision::Call(normalize("3001234567").unwrap())
        );
        assert_eq!(
            check(&ClientFacts {
                is_sent: true,
                ..client()
            }),
            Err(SkipReason::AlreadySent)
        );
        assert_eq!(
            check(&ClientFacts {
                has_open_invoice: false,
                ..client()
            }),
            Err(SkipReason::NoOpenInvoice)
        );
        for bad in [None, Some(0), Some(40), Some(-3)] {
            assert_eq!(
                check(&ClientFacts {
                    corte: bad,
                    ..client()
                }),
                Err(SkipReason::BadCorte)
            );
        }
        assert_eq!(
            check(&ClientFacts {
                corte: Some(22),
                ..client()
            }),
            Err(SkipReason::BeforeCutoffWindow)
        );
        assert_eq!(
            check(&ClientFacts {
                corte: Some(21),
                ..client()
            }),
            Ok(())
        );
        assert_eq!(
            check(&ClientFacts {
                last_attempt: Some(LastAttempt {
                    attempt_no: 1,
                    outcome: None,
                    ended_at: None,
                    phone_raw: None
                }),
                ..client()
            }),
            Err(SkipReason::CallInProgress)
        );
        assert_eq!(
            check(&ClientFacts {
                attempts: 3,
                ..client()
            }),
            Err(SkipReason::MaxAttempts)
        );
        let bad_phone = ClientFacts {
            telefono: Some("601 234 5678".into()),
            ..client()
        };
        assert_eq!(
            check(&bad_phone),
            Ok(()),
            "never recorded yet: selected so the pass records it"
        );
        assert_eq!(
            decide(&bad_phone, at(NOW), &policy(), &w),
            Decision::Skip(SkipReason::InvalidPhone)
        );
        assert_eq!(
            decide(&client(), at("2026-11-22 10:00"), &policy(), &w),
            Decision::Skip(SkipReason::OutsideCallingWindow)
        );
    }

    #[test]
    fn invalid_number_waits_for_a_new_number() {
        let recorded = ClientFacts {
            attempts: 1,
            last_attempt: last(Some(Outcome::InvalidNumber), "2026-11-01 10:00"),
            ..client()
        };
        assert_eq!(check(&recorded), Err(SkipReason::InvalidPhone));
        let changed = ClientFacts {
            telefono: Some("3109876543".into()),
            ..recorded
        };
        assert_eq!(check(&changed), Ok(()));
    }

    #[test]
    fn retry_delays_per_outcome() {
        for (outcome, minutes) in [
            (Outcome::Busy, 30),
            (Outcome::NoAnswer, 60),
            (Outcome::Congestion, 120),
            (Outcome::Failed, 120),
            (Outcome::Timeout, 120),
            (Outcome::Rejected, 120),
        ] {
            let ended = at(NOW) - Duration::minutes(minutes);
            let just_due = ClientFacts {
                attempts: 1,
                last_attempt: Some(LastAttempt {
                    attempt_no: 1,
                    outcome: Some(outcome),
                    ended_at: Some(ended),
                    phone_raw: None,
                }),
                ..client()
            };
            assert_eq!(check(&just_due), Ok(()), "{outcome} after {minutes} min");
            let mut not_due = just_due.clone();
            not_due.last_attempt.as_mut().unwrap().ended_at = Some(ended + Duration::seconds(1));
            assert_eq!(check(&not_due), Err(SkipReason::RetryNotDue), "{outcome}");
        }
        // Aborted calls go again on the next pass by default.
        assert_eq!(
            check(&ClientFacts {
                attempts: 1,
                last_attempt: last(Some(Outcome::Aborted), "2026-11-20 09:59"),
                ..client()
            }),
            Ok(())
        );
    }

    /// A short listen is contact made but no reminder delivered: the
    /// client is called again, but not before the next calling day.
    #[test]
    fn an_early_hang_up_waits_for_the_next_day() {
        let hung_up = |when: &str| ClientFacts {
            attempts: 1,
            last_attempt: last(Some(Outcome::HungUpEarly), when),
            ..client()
        };
        assert_eq!(
            check(&hung_up("2026-11-20 07:01")),
            Err(SkipReason::RetryNotDue)
        );
        assert_eq!(
            check(&hung_up("2026-11-20 09:59")),
            Err(SkipReason::RetryNotDue)
        );
        assert_eq!(check(&hung_up("2026-11-19 18:59")), Ok(()));
    }

    #[test]
    fn contact_spacing_is_in_calendar_days() {
        let recent = |when: &str| ClientFacts {
            last_contact: Some(at(when)),
            ..client()
        };
        // Delivered on Friday 13 Nov 18:00: blocked through Thursday 19th, free on Friday 20th.
        assert_eq!(check(&recent("2026-11-13 18:00")), Ok(()));
        assert_eq!(
            check(&recent("2026-11-14 08:00")),
            Err(SkipReason::ContactedRecently)
        );
        assert_eq!(
            check(&recent("2026-11-20 07:30")),
            Err(SkipReason::ContactedRecently)
        );
        let off = Policy {
            min_days_between_contacts: 0,
            ..policy()
        };
        assert_eq!(
            check_client(&recent("2026-11-20 07:30"), at(NOW), &off),
            Ok(())
        );
    }
}
