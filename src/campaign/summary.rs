//! What a pass did, for the operator's one summary line per pass and
//! the demo's table: every selected client is either a call (with its
//! outcome) or a skip (with its reason).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::trunks::TrunkStats;
use crate::rules::outcome::Outcome;
use crate::rules::selection::SkipReason;

/// Why a selected client was not called in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// The rules refused a client the SQL selected (data changed between).
    Rule(SkipReason),
    /// Another daemon, or an earlier attempt, holds the claim.
    ClaimedElsewhere,
    /// The claim could not be written (MySQL away).
    ClaimFailed,
    /// The pass ended (global timeout, abort) before its turn.
    PassEndedFirst,
    /// SIGTERM: nothing new is dialled.
    ShuttingDown,
    /// The calling window closed while the pass ran.
    WindowClosedMidPass,
    /// The call task failed before it claimed anything.
    InternalError,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Rule(r) => r.as_str(),
            Skip::ClaimedElsewhere => "claimed elsewhere",
            Skip::ClaimFailed => "claim failed",
            Skip::PassEndedFirst => "pass ended first",
            Skip::ShuttingDown => "shutting down",
            Skip::WindowClosedMidPass => "window closed mid-pass",
            Skip::InternalError => "internal error",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One line per finished attempt, for logs and the demo's table.
#[derive(Debug, Clone)]
pub struct CallLine {
    pub client_id: i64,
    pub phone: String,
    pub trunk: Option<String>,
    pub outcome: Outcome,
    pub cause: Option<i64>,
    pub ring_seconds: u32,
    pub talk_seconds: u32,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PassSummary {
    pub selected: usize,
    pub skipped: BTreeMap<Skip, usize>,
    pub outcomes: BTreeMap<Outcome, usize>,
    pub trunks: Vec<(String, TrunkStats)>,
    pub calls: Vec<CallLine>,
    pub wall: Duration,
    /// The window was closed: nothing was selected.
    pub window_closed: Option<String>,
    /// Outcomes that could not be written (MySQL down): logged in full.
    pub unwritten: usize,
    /// Every trunk's endpoint was offline: nothing was selected.
    pub all_trunks_offline: bool,
}

/// What the passes so far did, for the metrics (README "Metrics").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassFacts {
    /// Passes run (including those that found the window closed).
    pub passes: u64,
    /// The last pass's wall time and clients read.
    pub last_wall: Duration,
    pub last_selected: usize,
}

#[derive(Debug, Default)]
pub struct PassTally(std::sync::Mutex<PassFacts>);

impl PassTally {
    pub(crate) fn record(&self, summary: &PassSummary) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.passes += 1;
        f.last_wall = summary.wall;
        f.last_selected = summary.selected;
    }

    pub fn get(&self) -> PassFacts {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl PassSummary {
    pub(crate) fn skip(&mut self, reason: Skip) {
        self.skip_n(reason, 1);
    }

    /// The operator's one line per pass.
    pub fn log(&self) {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(o, n)| format!("{o}={n}"))
            .collect();
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let trunks: Vec<String> = self
            .trunks
            .iter()
            .map(|(t, s)| {
                format!(
                    "{t}:attempts={},answered={},failed={},state={}",
                    s.attempts,
                    s.answered,
                    s.failed,
                    s.state.as_str()
                )
            })
            .collect();
        tracing::info!(
            selected = self.selected,
            outcomes = %outcomes.join(" "),
            skipped = %skipped.join(" "),
            trunks = %trunks.join(" "),
            unwritten = self.unwritten,
            wall_s = format!("{:.1}", self.wall.as_secs_f64()),
            "pass summary"
        );
    }
}

impl PassSummary {
    pub(crate) fn skip_n(&mut self, reason: Skip, n: usize) {
        *self.skipped.entry(reason).or_insert(0) += n;
    }

    /// Adds what one page of clients produced.
    pub(crate) fn absorb(&mut self, page: PassSummary) {
        self.selected += page.selected;
        for (reason, n) in page.skipped {
            self.skip_n(reason, n);
        }
        for (outcome, n) in page.outcomes {
            *self.outcomes.entry(outcome).or_insert(0) += n;
        }
        self.calls.extend(page.calls);
        self.unwritten += page.unwritten;
    }
}
