//! What the outcome writes put in the call log, counted as they land, for
//! the metrics (README "Metrics"). Counting here, at the one place every
//! outcome is written (passes, panicked calls, invalid numbers, orphans
//! after a crash), makes the counters agree with `overdue_call_log` by
//! construction, and an idempotent re-write is not counted twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::rules::outcome::Outcome;

/// The trunk label of an outcome with no trunk (not dialled, adopted).
pub const NO_TRUNK: &str = "none";

#[derive(Debug, Default)]
pub struct Tally {
    /// Rows written, by (outcome, trunk).
    written: Mutex<BTreeMap<(Outcome, String), u64>>,
    /// Delivered reminders written, by trunk.
    delivered: Mutex<BTreeMap<String, u64>>,
    /// Outcome writes started and not yet landed (MySQL slow or away).
    waiting: AtomicU64,
}

/// Counts one outcome write as waiting while it lives.
pub(crate) struct Waiting<'a>(&'a Tally);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tally {
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self)
    }

    pub(crate) fn written(&self, outcome: Outcome, trunk: Option<&str>, delivered: bool) {
        let trunk = trunk.unwrap_or(NO_TRUNK).to_owned();
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        *w.entry((outcome, trunk.clone())).or_insert(0) += 1;
        drop(w);
        if delivered {
            let mut d = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
            *d.entry(trunk).or_insert(0) += 1;
        }
    }

    /// Outcome rows written by this process, by (outcome, trunk).
    pub fn outcomes(&self) -> BTreeMap<(Outcome, String), u64> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Delivered reminders written by this process, by trunk.
    pub fn delivered(&self) -> BTreeMap<String, u64> {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Outcome writes not yet landed.
    pub fn writes_waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_outcome_and_trunk_and_waiting_writes() {
        let t = Tally::default();
        t.written(Outcome::Completed, Some("a"), true);
        t.written(Outcome::Completed, Some("a"), true);
        t.written(Outcome::Busy, Some("b"), false);
        t.written(Outcome::InvalidNumber, None, false);
        let o = t.outcomes();
        assert_eq!(o[&(Outcome::Completed, "a".into())], 2);
        assert_eq!(o[&(Outcome::Busy, "b".into())], 1);
        assert_eq!(o[&(Outcome::InvalidNumber, NO_TRUNK.into())], 1);
        assert_eq!(t.delivered(), BTreeMap::from([("a".into(), 2)]));
        let w = t.waiting();
        let w2 = t.waiting();
        assert_eq!(t.writes_waiting(), 2);
        drop(w);
        drop(w2);
        assert_eq!(t.writes_waiting(), 0);
    }
}
