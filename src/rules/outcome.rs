//! The outcomes a call can end in (README "A pass"), as stored in the call log.

use std::fmt;
use std::str::FromStr;

/// Exactly one per call attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered, prompt heard to the end.
    Completed,
    /// Answered, the callee hung up during the prompt.
    HungUpEarly,
    Busy,
    NoAnswer,
    Rejected,
    Congestion,
    InvalidNumber,
    /// Originate refused by Asterisk (endpoint or configuration problem).
    TrunkError,
    Failed,
    /// Our per-call timeout fired.
    Timeout,
    /// Our shutdown, the global pass timeout, an orphan closed after a
    /// crash, or a channel Asterisk itself tore down (shutdown, restart).
    Aborted,
    /// The callee asked for a person (keypad `transfer`) or the voice
    /// agent (`agent`): the channel went on to the dialplan.
    Transferred,
    /// An answering machine took the call (README "Answering machines").
    Voicemail,
    /// The callee pressed the opt-out key: never dialled again while the
    /// `overdue_opt_out` row exists.
    OptedOut,
}

impl Outcome {
    pub const ALL: [Outcome; 14] = [
        Outcome::Completed,
        Outcome::HungUpEarly,
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::Rejected,
        Outcome::Congestion,
        Outcome::InvalidNumber,
        Outcome::TrunkError,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::Aborted,
        Outcome::Transferred,
        Outcome::Voicemail,
        Outcome::OptedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::HungUpEarly => "hung_up_early",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Rejected => "rejected",
            Outcome::Congestion => "congestion",
            Outcome::InvalidNumber => "invalid_number",
            Outcome::TrunkError => "trunk_error",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Aborted => "aborted",
            Outcome::Transferred => "transferred",
            Outcome::Voicemail => "voicemail",
            Outcome::OptedOut => "opted_out",
        }
    }

    /// Retried after a per-outcome delay (README "Who is called", retry not due). A completed
    /// reminder is never retried, nor one the callee answered with a key
    /// (transfer, opt-out); invalid numbers wait for staff to fix the
    /// number, and an early hang-up waits for the next calling day instead.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            Outcome::Completed
                | Outcome::HungUpEarly
                | Outcome::InvalidNumber
                | Outcome::Transferred
                | Outcome::OptedOut
        )
    }
}

/// Delivered means heard: the whole prompt (`completed`), a callee who
/// answered it with a key (`transferred`, `opted_out`), an early hang-up
/// after at least `min_heard_secs` of it, or a message left on an
/// answering machine when `amd.message_counts_as_delivered`
/// (`message_counts`). Only a delivered reminder sets
/// `outbound_call_is_sent`. Anything Asterisk or the daemon cut
/// (`aborted`, `timeout`) is not, whatever was heard.
pub fn is_delivered(
    outcome: Outcome,
    heard_secs: Option<u32>,
    min_heard_secs: u64,
    message_counts: bool,
) -> bool {
    match outcome {
        Outcome::Completed | Outcome::Transferred | Outcome::OptedOut => true,
        Outcome::HungUpEarly => heard_secs.is_some_and(|h| u64::from(h) >= min_heard_secs),
        Outcome::Voicemail => message_counts,
        _ => false,
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
        }
        assert!("answered".parse::<Outcome>().is_err());
        assert!(!Outcome::InvalidNumber.is_retryable());
        assert!(!Outcome::HungUpEarly.is_retryable());
        assert!(Outcome::Busy.is_retryable());
        assert!(Outcome::Aborted.is_retryable());
        assert!(Outcome::Voicemail.is_retryable());
        assert!(!Outcome::Transferred.is_retryable());
        assert!(!Outcome::OptedOut.is_retryable());
    }

    #[test]
    fn delivered_means_heard() {
        let heard_by_everyone: Vec<_> = Outcome::ALL
            .into_iter()
            .filter(|o| is_delivered(*o, Some(600), 5, false))
            .collect();
        assert_eq!(
            heard_by_everyone,
            [
                Outcome::Completed,
                Outcome::HungUpEarly,
                Outcome::Transferred,
                Outcome::OptedOut
            ]
        );
        assert!(is_delivered(Outcome::Completed, None, 5, false));
        assert!(!is_delivered(Outcome::HungUpEarly, Some(1), 5, false));
        assert!(!is_delivered(Outcome::HungUpEarly, Some(4), 5, false));
        assert!(is_delivered(Outcome::HungUpEarly, Some(5), 5, false));
        assert!(!is_delivered(Outcome::HungUpEarly, None, 5, false));
        assert!(is_delivered(Outcome::HungUpEarly, Some(0), 0, false));
        assert!(!is_delivered(Outcome::Aborted, Some(20), 5, true));
        // A message on a machine counts only when configured to.
        assert!(!is_delivered(Outcome::Voicemail, Some(20), 5, false));
        assert!(is_delivered(Outcome::Voicemail, Some(20), 5, true));
    }
}
