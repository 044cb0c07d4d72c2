//! The outcomes a call can end in (SPEC §5), as stored in the call log.

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
    /// Shutdown or the global pass timeout.
    Aborted,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
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
        }
    }

    /// The reminder reached the client: sets `outbound_call_is_sent`.
    pub fn is_delivered(self) -> bool {
        matches!(self, Outcome::Completed | Outcome::HungUpEarly)
    }

    /// Retried after a delay (SPEC §6). Delivered reminders are never
    /// retried, and invalid numbers wait for staff to fix the number.
    pub fn is_retryable(self) -> bool {
        !self.is_delivered() && self != Outcome::InvalidNumber
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
        let delivered: Vec<_> = Outcome::ALL
            .into_iter()
            .filter(|o| o.is_delivered())
            .collect();
        assert_eq!(delivered, [Outcome::Completed, Outcome::HungUpEarly]);
        assert!(!Outcome::InvalidNumber.is_retryable());
        assert!(Outcome::Busy.is_retryable());
    }
}
