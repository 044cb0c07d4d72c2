//! One campaign pass (README "A pass"): read the due clients page by page
//! (the hopper), hand each to an attempt (`attempt.rs`) as soon as a
//! channel is free, and stop at the global timeout, a shutdown or the end
//! of the calling window. `Campaign` is what every pass shares.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::time::Instant;

use super::call::after;
use super::trunks::TrunkPool;
use crate::ari::router::Router;
use crate::ari::{AriClient, ConnState};
use crate::billing::{Billing, BillingError, CallRecord};
use crate::clock::Clock;
use crate::config::Config;
use crate::rules::outcome::Outcome;
use crate::rules::phone::{mask, normalize, Mobile};
use crate::rules::selection::{decide, ClientFacts, Decision, Policy, SkipReason};
use crate::rules::window::CallingWindow;

pub use super::summary::{CallLine, PassFacts, PassSummary, PassTally, Skip};

/// Everything a pass needs, shared by all passes of a daemon.
pub struct Campaign {
    pub config: Arc<Config>,
    pub billing: Billing,
    pub ari: AriClient,
    pub router: Arc<Router>,
    pub ari_state: watch::Receiver<ConnState>,
    pub trunks: Arc<TrunkPool>,
    /// Written into each claim: which daemon dialled.
    pub host: String,
    pub clock: Arc<dyn Clock>,
    /// Asterisk's `startup_time` as last seen (`None` until known).
    pub asterisk_started: watch::Receiver<Option<String>>,
    #[doc(hidden)]
    pub hooks: Hooks,
    /// Calls adopted after a restart still being followed.
    pub(crate) adopted: std::sync::atomic::AtomicUsize,
    /// Callees sent to the voice agent by the keypad's `agent`.
    pub handed_to_agent: std::sync::atomic::AtomicUsize,
    pub(crate) adopted_done: tokio::sync::Notify,
    /// Raised at shutdown: adopted calls are hung up.
    pub(crate) adopt_abort: watch::Sender<bool>,
    /// Attempts this process has claimed and not yet written: never an
    /// orphan, and a stray channel of one is not adopted.
    pub(crate) in_flight: std::sync::Mutex<std::collections::HashSet<crate::billing::Claim>>,
    /// What the passes so far did (metrics).
    pub passes: PassTally,
}

/// Faults tests inject into a running campaign. Empty in production.
#[doc(hidden)]
#[derive(Default)]
pub struct Hooks {
    /// Clients whose call task panics when their call is answered.
    pub panic_on_answer: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl Hooks {
    pub(super) fn panics_on_answer(&self, client_id: i64) -> bool {
        self.panic_on_answer
            .lock()
            .is_ok_and(|set| set.contains(&client_id))
    }
}

#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub ignore_window: bool,
    /// Turning true (SIGTERM): originate nothing more; calls in flight go on.
    pub drain: Option<watch::Receiver<bool>>,
    /// Timestamps of the refill path, for the benchmark (`probe.rs`);
    /// `None` in production.
    #[doc(hidden)]
    pub probe: Option<Arc<super::probe::Probe>>,
}

impl PassOptions {
    pub(super) fn draining(&self) -> bool {
        self.drain.as_ref().is_some_and(|d| *d.borrow())
    }
}

/// The clients read so far and not yet dialled, and where the next page
/// starts. A page holds four channels' worth of clients per free channel:
/// enough that a fetch (a few ms) never leaves a channel idle, small enough
/// that the first call does not wait for the whole table.
struct Hopper {
    queue: std::collections::VecDeque<(ClientFacts, Mobile)>,
    after: i64,
    page: usize,
    done: bool,
}

impl Hopper {
    fn new(max_concurrent_calls: u32) -> Hopper {
        Hopper {
            queue: Default::default(),
            after: 0,
            page: 4 * (max_concurrent_calls.max(1) as usize),
            done: false,
        }
    }
}

/// How many claims may wait ready for a free channel: enough to cover a
/// claim's slow tail (tens of ms, BENCHMARKS.md "Where the last
/// percent goes") at the rate channels free up, few enough that a pass
/// ending or a daemon stopping has little to give back. One in ten
/// channels, at least two.
pub(super) fn claims_ahead(max_concurrent_calls: u32) -> usize {
    (max_concurrent_calls as usize / 10).max(2)
}

/// Raises `abort` at the pass's deadline (which may move later while the
/// pass reads more clients) or when the daemon shuts down.
async fn global_timeout(
    mut deadline: watch::Receiver<Instant>,
    mut shutdown: watch::Receiver<bool>,
    abort: watch::Sender<bool>,
) {
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {
                if *deadline.borrow() <= at {
                    tracing::warn!("global pass timeout: hanging up calls in flight");
                    break;
                }
            }
            changed = deadline.changed() => {
                if changed.is_err() {
                    // The pass is over.
                    return;
                }
            }
            _ = shutdown.wait_for(|a| *a) => {
                tracing::info!("shutdown: hanging up calls in flight");
                break;
            }
        }
    }
    let _ = abort.send(true);
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("cannot select clients: {0}")]
    Select(BillingError),
    #[error("cannot check the attempts an earlier run left open: {0}")]
    Orphans(BillingError),
}

pub(super) struct Shared {
    pub(super) campaign: Arc<Campaign>,
    pub(super) summary: Mutex<PassSummary>,
    pub(super) pacing: Mutex<Instant>,
    pub(super) abort: watch::Receiver<bool>,
    pub(super) window_shut: std::sync::atomic::AtomicBool,
    pub(super) opts: PassOptions,
}

impl Campaign {
    /// Whether this process holds `claim` right now (see `in_flight`).
    pub(crate) fn holds(&self, claim: &crate::billing::Claim) -> bool {
        self.in_flight.lock().is_ok_and(|set| set.contains(claim))
    }

    pub(crate) fn hold(&self, claim: &crate::billing::Claim, held: bool) {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            set.insert(claim.clone());
        } else {
            set.remove(claim);
        }
    }

    pub(super) fn now(&self) -> NaiveDateTime {
        self.clock.now()
    }

    pub(super) fn window(&self, opts: &PassOptions) -> CallingWindow {
        if opts.ignore_window {
            // Every day open all day: the window is somebody else's decision.
            let all_day = crate::rules::window::Hours {
                start: chrono::NaiveTime::MIN,
                end: chrono::NaiveTime::from_hms_opt(23, 59, 59).unwrap_or(chrono::NaiveTime::MIN),
            };
            CallingWindow {
                weekdays: Some(all_day),
                saturday: Some(all_day),
                sunday: Some(all_day),
                colombian_holidays: false,
                extra_closed_days: vec![],
            }
        } else {
            self.config.window.clone()
        }
    }

    /// What every pass goes through: attempts left open by an earlier run
    /// are closed or adopted, adopted calls are waited for (they hold
    /// channels too), then the pass runs.
    pub async fn pass(
        self: &Arc<Self>,
        opts: PassOptions,
        abort: watch::Receiver<bool>,
    ) -> Result<PassSummary, PassError> {
        // Adopted calls first: one still writing its outcome is no orphan.
        self.wait_adopted(Some(abort.clone())).await;
        super::reconcile::orphans(self)
            .await
            .map_err(PassError::Orphans)?;
        self.wait_adopted(Some(abort.clone())).await;
        // Events may have been missed (a reconnect, a subscription that
        // failed): the pass starts from what Asterisk says now.
        super::trunks::refresh_health(&self.trunks, &self.ari).await;
        let summary = self.run_pass(opts, abort).await?;
        self.passes.record(&summary);
        Ok(summary)
    }

    /// Until no adopted call is left (or `abort` is raised).
    pub(crate) async fn wait_adopted(&self, abort: Option<watch::Receiver<bool>>) {
        use std::sync::atomic::Ordering;
        let mut abort = abort.unwrap_or_else(|| watch::channel(false).1);
        loop {
            let done = self.adopted_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.adopted.load(Ordering::SeqCst) == 0 || *abort.borrow() {
                return;
            }
            tokio::select! {
                _ = done => {}
                _ = abort.wait_for(|a| *a) => return,
            }
        }
    }

    /// Runs one pass. `abort` (shutdown) stops new calls and hangs up those
    /// in flight; the global timeout does the same by itself.
    async fn run_pass(
        self: &Arc<Self>,
        opts: PassOptions,
        abort: watch::Receiver<bool>,
    ) -> Result<PassSummary, PassError> {
        let began = Instant::now();
        let now = self.now();
        let window = self.window(&opts);
        let mut summary = PassSummary::default();
        if let Err(closed) = window.check_local(now) {
            summary.window_closed = Some(closed.to_string());
            tracing::info!(reason = %closed, "calling window closed; no pass");
            return Ok(summary);
        }
        if self.trunks.all_offline() {
            summary.all_trunks_offline = true;
            summary.trunks = self.trunks.stats();
            tracing::warn!("every trunk's endpoint is offline; no pass (nobody is claimed)");
            summary.wall = began.elapsed();
            return Ok(summary);
        }
        let policy = Policy::from_config(&self.config);
        let c = &self.config.campaign;
        let mut hopper = Hopper::new(c.max_concurrent_calls);
        if let Some(p) = &opts.probe {
            p.pass_began(began);
        }
        let page_began = Instant::now();
        self.next_page(&mut hopper, &policy, &window, &mut summary)
            .await
            .map_err(PassError::Select)?;
        if let Some(p) = &opts.probe {
            p.page(page_began);
        }

        // Global timeout: the seed script's rule, base + per selected
        // client; it grows as pages of clients arrive.
        let (deadline_tx, deadline_rx) = watch::channel(after(
            Instant::now(),
            Duration::from_secs(
                c.run_timeout_base_secs.saturating_add(
                    c.run_timeout_per_client_secs
                        .saturating_mul(hopper.queue.len() as u64),
                ),
            ),
        ));
        let (abort_tx, abort_rx) = watch::channel(false);
        let watcher = tokio::spawn(global_timeout(deadline_rx, abort.clone(), abort_tx.clone()));
        if *abort.borrow() {
            let _ = abort_tx.send(true);
        }

        let shared = Arc::new(Shared {
            campaign: self.clone(),
            summary: Mutex::new(summary),
            pacing: Mutex::new(Instant::now()),
            abort: abort_rx.clone(),
            window_shut: std::sync::atomic::AtomicBool::new(false),
            opts,
        });
        let slots = Arc::new(Semaphore::new(c.max_concurrent_calls as usize));
        // Attempts under way: every channel's call plus a few claimed
        // ahead, waiting ready for the next free channel (`attempt.rs`).
        let tickets = Arc::new(Semaphore::new(
            c.max_concurrent_calls as usize + claims_ahead(c.max_concurrent_calls),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut abort_rx = abort_rx;
        loop {
            let stopped = || {
                *abort_rx.borrow()
                    || shared.opts.draining()
                    || shared
                        .window_shut
                        .load(std::sync::atomic::Ordering::Relaxed)
            };
            if hopper.queue.is_empty() && !hopper.done && !stopped() {
                let mut found = PassSummary::default();
                let page_began = Instant::now();
                let read = self
                    .next_page(&mut hopper, &policy, &window, &mut found)
                    .await;
                if let Some(p) = &shared.opts.probe {
                    p.page(page_began);
                }
                match read {
                    Ok(()) => {
                        let more = Duration::from_secs(
                            c.run_timeout_per_client_secs
                                .saturating_mul(hopper.queue.len() as u64),
                        );
                        deadline_tx.send_modify(|d| *d = after(*d, more));
                    }
                    Err(e) => {
                        // The clients not yet read wait for the next pass;
                        // the calls in flight finish and are written.
                        tracing::error!(error = %e, "cannot read the next page of clients; the rest of this pass's clients wait for the next pass");
                        hopper.done = true;
                    }
                }
                shared.summary.lock().await.absorb(found);
            }
            let Some((client, mobile)) = hopper.queue.pop_front() else {
                break;
            };
            let ticket = tokio::select! {
                p = tickets.clone().acquire_owned() => p.ok(),
                _ = abort_rx.wait_for(|a| *a) => None,
            };
            let Some(ticket) = ticket else { break };
            if *abort_rx.borrow()
                || shared.opts.draining()
                || shared
                    .window_shut
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                drop(ticket);
                break;
            }
            let shared = shared.clone();
            let slots = slots.clone();
            // Boxed: each layer of the call task's future would otherwise
            // hold its own copy of the client's facts for the call's life.
            let client = Box::new(client);
            tasks.spawn(async move {
                shared
                    .call_client_guarded(client, mobile, ticket, slots)
                    .await;
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        watcher.abort();

        let mut summary = std::mem::take(&mut *shared.summary.lock().await);
        let not_started =
            summary.selected - summary.calls.len() - summary.skipped.values().sum::<usize>();
        if not_started > 0 {
            let reason = if shared
                .window_shut
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                Skip::WindowClosedMidPass
            } else if shared.opts.draining() {
                Skip::ShuttingDown
            } else {
                Skip::PassEndedFirst
            };
            summary.skip_n(reason, not_started);
        }
        summary.trunks = self.trunks.stats();
        summary.wall = began.elapsed();
        if let Some(p) = &shared.opts.probe {
            p.pass_ended();
        }
        summary.log();
        Ok(summary)
    }

    /// Reads the next page of due clients: callable ones join the queue,
    /// the others are recorded (invalid phones) or counted as skipped.
    async fn next_page(
        &self,
        hopper: &mut Hopper,
        policy: &Policy,
        window: &CallingWindow,
        summary: &mut PassSummary,
    ) -> Result<(), BillingError> {
        let now = self.now();
        let (clients, next) = self
            .billing
            .eligible_page(now, policy, hopper.after, hopper.page)
            .await?;
        match next {
            Some(id) => hopper.after = id,
            None => hopper.done = true,
        }
        summary.selected += clients.len();
        for c in clients {
            match decide(&c, now, policy, window) {
                Decision::Call(m) => hopper.queue.push_back((c, m)),
                Decision::Skip(SkipReason::InvalidPhone) => {
                    self.record_invalid_phone(&c, summary).await;
                }
                Decision::Skip(reason) => {
                    tracing::warn!(client_id = c.id, %reason, "selected by SQL but refused by the rules; skipped");
                    summary.skip(Skip::Rule(reason));
                }
            }
        }
        Ok(())
    }

    async fn record_invalid_phone(&self, c: &ClientFacts, summary: &mut PassSummary) {
        let raw = c.telefono.clone().unwrap_or_default();
        let why = normalize(&raw)
            .err()
            .map_or_else(String::new, |e| e.to_string());
        tracing::warn!(client_id = c.id, phone = %mask(&raw), reason = %why, "invalid phone number: not dialled, recorded until staff change it");
        let now = self.now();
        match self
            .billing
            .claim(
                c.id,
                crate::billing::Seen::of(c),
                c.telefono.as_deref(),
                &self.host,
                now,
            )
            .await
        {
            Ok(Some(claim)) => {
                let record = CallRecord::not_dialled(
                    Outcome::InvalidNumber,
                    now,
                    format!("invalid phone: {why}"),
                );
                if self.billing.write_outcome(&claim, &record).await {
                    *summary.outcomes.entry(Outcome::InvalidNumber).or_insert(0) += 1;
                    summary.calls.push(CallLine {
                        client_id: c.id,
                        phone: mask(&raw),
                        trunk: None,
                        outcome: Outcome::InvalidNumber,
                        cause: None,
                        ring_seconds: 0,
                        talk_seconds: 0,
                        detail: record.detail,
                    });
                } else {
                    summary.unwritten += 1;
                }
            }
            Ok(None) => summary.skip(Skip::ClaimedElsewhere),
            Err(e) => {
                tracing::error!(client_id = c.id, error = %e, "cannot claim attempt");
                summary.skip(Skip::ClaimFailed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's rule, base + per selected client, with clients read in
    /// pages: a deadline moved later by a new page holds the abort back.
    #[tokio::test(start_paused = true)]
    async fn global_timeout_follows_the_deadline_as_pages_arrive() {
        let start = Instant::now();
        let (deadline_tx, deadline_rx) = watch::channel(start + Duration::from_secs(10));
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        let (abort_tx, mut abort_rx) = watch::channel(false);
        let watcher = tokio::spawn(global_timeout(deadline_rx, shutdown_rx, abort_tx));

        tokio::time::sleep(Duration::from_secs(5)).await;
        deadline_tx.send_modify(|d| *d += Duration::from_secs(20));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!*abort_rx.borrow(), "aborted at the first page's deadline");

        abort_rx.wait_for(|a| *a).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        watcher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_aborts_before_the_deadline() {
        let start = Instant::now();
        let (_deadline_tx, deadline_rx) = watch::channel(start + Duration::from_secs(600));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (abort_tx, mut abort_rx) = watch::channel(false);
        tokio::spawn(global_timeout(deadline_rx, shutdown_rx, abort_tx));
        tokio::time::sleep(Duration::from_secs(3)).await;
        shutdown_tx.send(true).unwrap();
        abort_rx.wait_for(|a| *a).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
