//! Timestamps of one pass's refill path, for the campaign benchmark's
//! "where the last percent goes" breakdown (BENCHMARKS.md). Off unless
//! `PassOptions::probe` holds one: production passes carry `None`, so the
//! cost there is one `Option` check per stage.
//!
//! What is recorded: per call, when its claim began and committed, when
//! its channel slot was granted, when pacing let it go, when a trunk was acquired,
//! when the originate was sent, when the call ended and when its slot was
//! given back (before the outcome write); per pass, the page reads and the
//! pass's start and end. The benchmark pairs each slot grant with the
//! release that made it possible and splits the gap.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

/// The stages of one attempt, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The pass loop gave it a look-ahead ticket; its claim begins.
    Ticket,
    /// Its claim is written.
    Claimed,
    /// It got a channel slot (semaphore permit).
    Granted,
    /// The pacing bucket let it go.
    Paced,
    /// A trunk was acquired.
    Trunk,
    /// The originate request is about to be sent.
    Originate,
    /// The call ended (`place` returned).
    Ended,
    /// The slot is given back (before the outcome write).
    Released,
}

/// One attempt's timestamps.
pub type Marks = HashMap<Stage, Instant>;

#[derive(Debug, Default)]
pub struct Probe {
    calls: Mutex<HashMap<i64, Marks>>,
    pages: Mutex<Vec<(Instant, Instant)>>,
    pass: Mutex<Option<(Instant, Option<Instant>)>>,
}

impl Probe {
    pub(crate) fn mark(&self, client_id: i64, stage: Stage) {
        let now = Instant::now();
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.entry(client_id).or_default().insert(stage, now);
    }

    pub(crate) fn page(&self, began: Instant) {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages.push((began, Instant::now()));
    }

    pub(crate) fn pass_began(&self, at: Instant) {
        *self.pass.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, None));
    }

    pub(crate) fn pass_ended(&self) {
        let mut pass = self.pass.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, end)) = pass.as_mut() {
            *end = Some(Instant::now());
        }
    }

    /// Every attempt's marks, by client id.
    pub fn calls(&self) -> HashMap<i64, Marks> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The page reads, (began, ended).
    pub fn pages(&self) -> Vec<(Instant, Instant)> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pass's (began, ended).
    pub fn pass(&self) -> Option<(Instant, Option<Instant>)> {
        *self.pass.lock().unwrap_or_else(|p| p.into_inner())
    }
}
