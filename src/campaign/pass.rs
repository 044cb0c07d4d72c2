//! One campaign pass (SPEC §5, §6, §8): select the due clients, claim each
//! attempt, fill every free channel within the pacing limits, fail over
//! between trunks, and write each outcome the moment it is known.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::time::Instant;

use super::call::{after, place, CallEnd, CallPlan, Ended};
use super::outcome::{is_delivered, Outcome};
use super::router::Router;
use super::selection::{decide, ClientFacts, Decision, Policy, SkipReason};
use super::trunks::dial_string;
use super::trunks::pool::{Refusal, TrunkPool, TrunkStats, Use};
use crate::ari::{AriClient, ConnState};
use crate::billing::phone::{mask, normalize, Mobile};
use crate::billing::{Billing, BillingError, CallRecord, Claim};
use crate::clock::Clock;
use crate::compliance::CallingWindow;
use crate::config::Config;

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
    pub(crate) adopted_done: tokio::sync::Notify,
    /// Raised at shutdown: adopted calls are hung up.
    pub(crate) adopt_abort: watch::Sender<bool>,
}

/// Faults tests inject into a running campaign. Empty in production.
#[doc(hidden)]
#[derive(Default)]
pub struct Hooks {
    /// Clients whose call task panics when their call is answered.
    pub panic_on_answer: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl Hooks {
    fn panics_on_answer(&self, client_id: i64) -> bool {
        self.panic_on_answer
            .lock()
            .is_ok_and(|set| set.contains(&client_id))
    }
}

/// What a call task has done so far, kept outside the task so that, should
/// it panic, the pass can still hang its channel up, give its trunk back
/// and record its attempt.
#[derive(Default)]
struct Progress {
    claim: Option<Claim>,
    channel: Option<String>,
    trunk: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub ignore_window: bool,
    /// Turning true (SIGTERM): originate nothing more; calls in flight go on.
    pub drain: Option<watch::Receiver<bool>>,
}

impl PassOptions {
    fn draining(&self) -> bool {
        self.drain.as_ref().is_some_and(|d| *d.borrow())
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
    pub skipped: BTreeMap<String, usize>,
    pub outcomes: BTreeMap<Outcome, usize>,
    pub trunks: Vec<(String, TrunkStats)>,
    pub calls: Vec<CallLine>,
    pub wall: Duration,
    /// The window was closed: nothing was selected.
    pub window_closed: Option<String>,
    /// Outcomes that could not be written (MySQL down): logged in full.
    pub unwritten: usize,
}

impl PassSummary {
    fn skip(&mut self, reason: impl Into<String>) {
        *self.skipped.entry(reason.into()).or_insert(0) += 1;
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
                    "{t}:attempts={},answered={},failed={}",
                    s.attempts, s.answered, s.failed
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

/// The media list with `{saldo}` and `{corte}` filled in for this client.
pub(crate) fn media_for(config: &Config, client: &ClientFacts) -> Vec<String> {
    let saldo = client
        .open_balance
        .as_deref()
        .and_then(|b| b.split('.').next())
        .unwrap_or("0")
        .to_owned();
    let corte = client.corte.map_or_else(String::new, |c| c.to_string());
    config
        .campaign
        .media
        .iter()
        .map(|m| m.replace("{saldo}", &saldo).replace("{corte}", &corte))
        .collect()
}

struct Shared {
    campaign: Arc<Campaign>,
    summary: Mutex<PassSummary>,
    pacing: Mutex<Instant>,
    abort: watch::Receiver<bool>,
    window_shut: std::sync::atomic::AtomicBool,
    opts: PassOptions,
}

impl Campaign {
    fn now(&self) -> NaiveDateTime {
        self.clock.now()
    }

    fn window(&self, opts: &PassOptions) -> CallingWindow {
        if opts.ignore_window {
            // Every day open all day: the window is somebody else's decision.
            let all_day = crate::compliance::window::Hours {
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
        super::reconcile::orphans(self)
            .await
            .map_err(PassError::Orphans)?;
        self.wait_adopted(Some(abort.clone())).await;
        self.run_pass(opts, abort).await
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
        let policy = Policy::from_config(&self.config);
        let c = &self.config.campaign;
        let mut hopper = Hopper::new(c.max_concurrent_calls);
        self.next_page(&mut hopper, &policy, &window, &mut summary)
            .await
            .map_err(PassError::Select)?;

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
                match self
                    .next_page(&mut hopper, &policy, &window, &mut found)
                    .await
                {
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
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.ok(),
                _ = abort_rx.wait_for(|a| *a) => None,
            };
            let Some(permit) = permit else { break };
            if *abort_rx.borrow()
                || shared
                    .window_shut
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                drop(permit);
                break;
            }
            let shared = shared.clone();
            tasks.spawn(async move {
                shared.call_client_guarded(client, mobile).await;
                drop(permit);
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
                "window closed mid-pass"
            } else {
                "pass ended first"
            };
            summary.skip_n(reason, not_started);
        }
        summary.trunks = self.trunks.stats();
        summary.wall = began.elapsed();
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
                    summary.skip(reason.as_str());
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
            .claim(c.id, c.attempts, c.telefono.as_deref(), &self.host, now)
            .await
        {
            Ok(Some(claim)) => {
                let record = CallRecord::not_dialled(
                    Outcome::InvalidNumber,
                    now,
                    format!("invalid phone: {why}"),
                );
                if self.write(&claim, &record).await {
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
            Ok(None) => summary.skip("claimed elsewhere"),
            Err(e) => {
                tracing::error!(client_id = c.id, error = %e, "cannot claim attempt");
                summary.skip("claim failed");
            }
        }
    }

    /// Writes an outcome, retrying with backoff for as long as MySQL is
    /// unreachable (no new calls start meanwhile: claims fail too). The
    /// full record is logged at the first failure, so it survives even if
    /// the process is killed before MySQL comes back. `false` only for an
    /// error retrying cannot fix.
    pub(crate) async fn write(&self, claim: &Claim, record: &CallRecord) -> bool {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.billing.record_outcome(claim, record).await {
                Ok(_) => {
                    if attempt > 1 {
                        tracing::info!(
                            client_id = claim.client_id,
                            attempt,
                            "outcome written after MySQL came back"
                        );
                    }
                    return true;
                }
                Err(e) if e.is_transient() => {
                    if attempt == 1 {
                        tracing::warn!(client_id = claim.client_id, attempt_no = claim.attempt_no, ?record, error = %e, "MySQL unreachable: outcome kept, retrying until written");
                    } else {
                        tracing::warn!(client_id = claim.client_id, attempt, error = %e, "outcome still not written; retrying");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::error!(client_id = claim.client_id, attempt_no = claim.attempt_no, ?record, error = %e, "OUTCOME NOT WRITTEN");
                    return false;
                }
            }
        }
    }
}

impl PassSummary {
    fn skip_n(&mut self, reason: &str, n: usize) {
        *self.skipped.entry(reason.to_owned()).or_insert(0) += n;
    }

    /// Adds what one page of clients produced.
    fn absorb(&mut self, page: PassSummary) {
        self.selected += page.selected;
        for (reason, n) in page.skipped {
            self.skip_n(&reason, n);
        }
        for (outcome, n) in page.outcomes {
            *self.outcomes.entry(outcome).or_insert(0) += n;
        }
        self.calls.extend(page.calls);
        self.unwritten += page.unwritten;
    }
}

impl Shared {
    /// `call_client`, with what a panic would leave behind cleaned up: the
    /// channel is hung up, the trunk given back and the attempt recorded
    /// `failed` with the panic's message; the pass goes on.
    async fn call_client_guarded(&self, client: ClientFacts, mobile: Mobile) {
        use futures_util::FutureExt;
        let progress = std::sync::Mutex::new(Progress::default());
        let client_id = client.id;
        let phone = mobile.masked();
        let run = std::panic::AssertUnwindSafe(self.call_client(client, mobile, &progress));
        let Err(panic) = run.catch_unwind().await else {
            return;
        };
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
        let camp = &self.campaign;
        tracing::error!(client_id, phone = %phone, panic = %message, "CALL TASK PANICKED: hanging up its channel and recording the attempt as failed");
        if let Some(index) = progress.trunk {
            camp.trunks.release(index, Use::Neutral);
        }
        if let Some(channel) = &progress.channel {
            camp.router.unregister(channel);
            if let Err(e) = camp.ari.hangup(channel, "normal").await {
                if !e.is_not_found() {
                    tracing::error!(client_id, %channel, error = %e, "cannot hang up the channel of a panicked call");
                }
            }
        }
        let Some(claim) = progress.claim else {
            return self.skip("internal error").await;
        };
        let record = CallRecord::closed(
            Outcome::Failed,
            progress.channel.clone(),
            camp.now(),
            format!("internal error (call task panicked): {message}"),
        );
        let record = CallRecord {
            dialled: progress.channel.is_some(),
            ..record
        };
        let written = camp.write(&claim, &record).await;
        let mut s = self.summary.lock().await;
        if !written {
            s.unwritten += 1;
        }
        *s.outcomes.entry(Outcome::Failed).or_insert(0) += 1;
        s.calls.push(CallLine {
            client_id,
            phone,
            trunk: None,
            outcome: Outcome::Failed,
            cause: None,
            ring_seconds: 0,
            talk_seconds: 0,
            detail: record.detail.clone(),
        });
    }

    fn note(progress: &std::sync::Mutex<Progress>, f: impl FnOnce(&mut Progress)) {
        f(&mut progress.lock().unwrap_or_else(|p| p.into_inner()));
    }

    async fn call_client(
        &self,
        client: ClientFacts,
        mobile: Mobile,
        progress: &std::sync::Mutex<Progress>,
    ) {
        let camp = &self.campaign;
        let cfg = &camp.config.campaign;
        // Pacing: calls_per_second originates at most.
        {
            let mut next = self.pacing.lock().await;
            let slot = (*next).max(Instant::now());
            *next = after(slot, Duration::from_secs_f64(1.0 / cfg.calls_per_second));
            drop(next);
            tokio::time::sleep_until(slot).await;
        }
        // Never originate while the event socket is down: Asterisk would hang up the answered call.
        if !self.connected().await {
            return self.skip("pass ended first").await;
        }
        if self.opts.draining() {
            return self.skip("shutting down").await;
        }
        // The window may have closed since the pass began: no call after it.
        let now = camp.now();
        if camp.window(&self.opts).check_local(now).is_err() {
            self.window_shut
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return self.skip("window closed mid-pass").await;
        }
        let claim = match camp
            .billing
            .claim(
                client.id,
                client.attempts,
                client.telefono.as_deref(),
                &camp.host,
                now,
            )
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return self.skip("claimed elsewhere").await,
            Err(e) => {
                tracing::error!(client_id = client.id, error = %e, "cannot claim attempt");
                return self.skip("claim failed").await;
            }
        };
        Self::note(progress, |p| p.claim = Some(claim.clone()));
        let media = media_for(&camp.config, &client);
        // Trunks that refused this attempt (cooled at once), and trunks on
        // which it congested before ringing (cooled only if another trunk
        // then reaches the callee: if all congest, the callee's network is).
        let mut refused: Vec<usize> = Vec::new();
        let mut congested: Vec<usize> = Vec::new();
        let max_tries = camp.trunks.len() * 3;
        let mut tries = 0;
        // A refused originate created no channel, so its id is used again;
        // a call that existed (congestion, next trunk) needs a new one.
        let mut channel_id = claim.channel_id();
        let mut placed_calls = 0;
        let mut last_refusal = None;
        let mut abort = self.abort.clone();
        while tries < max_tries {
            let avoid: Vec<usize> = refused.iter().chain(&congested).copied().collect();
            let acquired = tokio::select! {
                t = camp.trunks.acquire(&avoid) => Some(t),
                _ = abort.wait_for(|a| *a) => None,
            };
            let Some((index, trunk)) = acquired else {
                break;
            };
            Self::note(progress, |p| p.trunk = Some(index));
            // The socket may have dropped while we waited for a trunk.
            if !camp.ari_state.borrow().is_connected() {
                camp.trunks.release(index, Use::Neutral);
                Self::note(progress, |p| p.trunk = None);
                if !self.connected().await {
                    break;
                }
                continue;
            }
            Self::note(progress, |p| p.channel = Some(channel_id.clone()));
            let plan = CallPlan {
                channel_id: channel_id.clone(),
                endpoint: dial_string(&trunk.endpoint, mobile.national()),
                app: camp.config.ari.outbound_app.clone(),
                caller_id: trunk.caller_id.clone(),
                ring_timeout_secs: cfg.ring_timeout_secs,
                call_timeout: Duration::from_secs(cfg.call_timeout_secs),
                media: media.clone(),
                lang: cfg.lang.clone(),
                asterisk_started: camp.asterisk_started.borrow().clone(),
                panic_on_answer: camp.hooks.panics_on_answer(client.id),
            };
            let originated = camp.now();
            let end = place(
                &camp.ari,
                &camp.router,
                &plan,
                self.abort.clone(),
                camp.ari_state.clone(),
            )
            .await;
            Self::note(progress, |p| {
                p.trunk = None;
                p.channel = None;
            });
            match end {
                CallEnd::Refused { status, message } => {
                    last_refusal = Some(format!("HTTP {status}: {message}"));
                    // A refusal while the socket is down says nothing of the trunk.
                    if !camp.ari_state.borrow().is_connected() {
                        camp.trunks.release(index, Use::Neutral);
                        continue;
                    }
                    match camp.trunks.refused(index) {
                        Refusal::Asterisk => {
                            tracing::warn!(client_id = client.id, trunk = %trunk.name, status, %message, "Asterisk refused the originate on every trunk; no attempt spent, trying again");
                            refused.clear();
                            congested.clear();
                        }
                        Refusal::Trunk => {
                            tracing::warn!(client_id = client.id, trunk = %trunk.name, status, %message, "originate refused; trying the next trunk");
                            tries += 1;
                            if !refused.contains(&index) {
                                refused.push(index);
                            }
                        }
                    }
                }
                CallEnd::NotPlaced { reason } => {
                    camp.trunks.release(index, Use::Neutral);
                    tracing::warn!(client_id = client.id, %reason, "originate did not reach Asterisk");
                    let record = CallRecord::not_dialled(
                        Outcome::Aborted,
                        originated,
                        format!("not dialled: {reason}"),
                    );
                    return self
                        .finish(&client, &mobile, &claim, None, record, progress)
                        .await;
                }
                CallEnd::Ended(end)
                    if end.trunk_congested
                        && !congested.contains(&index)
                        && refused.len() + congested.len() + 1 < camp.trunks.len() =>
                {
                    camp.trunks.release(index, Use::Neutral);
                    tracing::warn!(client_id = client.id, trunk = %trunk.name, cause = ?end.cause, "congestion before ringing; trying the next trunk");
                    tries += 1;
                    congested.push(index);
                    placed_calls += 1;
                    channel_id = format!("{}-{}", claim.channel_id(), placed_calls + 1);
                    // Written before the next originate, so a crash leaves it findable.
                    if let Err(e) = camp.billing.set_channel(&claim, &channel_id).await {
                        tracing::warn!(client_id = client.id, error = %e, "cannot record the retry's channel id");
                    }
                }
                CallEnd::Ended(end) => {
                    let answered = end.answered_after.is_some();
                    camp.trunks.release(index, Use::Placed { answered });
                    if !end.trunk_congested {
                        // Another trunk got through: the earlier congestion was those trunks' fault.
                        for &t in &congested {
                            camp.trunks.blame(t);
                        }
                    }
                    let record = dialled(
                        &end,
                        originated,
                        &trunk.name,
                        &channel_id,
                        &mobile,
                        cfg.min_heard_secs,
                    );
                    return self
                        .finish(&client, &mobile, &claim, Some(&end), record, progress)
                        .await;
                }
            }
        }
        // Every trunk refused again and again, or the pass ended while waiting
        // for one: nothing was dialled, so no attempt is spent.
        let aborted = *self.abort.borrow();
        let (outcome, detail) = match last_refusal {
            Some(r) if !aborted => (Outcome::TrunkError, format!("every trunk refused: {r}")),
            _ => (
                Outcome::Aborted,
                "pass ended before a trunk was free".to_owned(),
            ),
        };
        let record = CallRecord::not_dialled(outcome, camp.now(), detail);
        self.finish(&client, &mobile, &claim, None, record, progress)
            .await;
    }

    /// Waits until the event socket is up; `false` if the pass ends first.
    async fn connected(&self) -> bool {
        let mut state = self.campaign.ari_state.clone();
        let mut abort = self.abort.clone();
        let ready = tokio::select! {
            r = state.wait_for(ConnState::is_connected) => r.is_ok(),
            _ = abort.wait_for(|a| *a) => false,
        };
        ready && !*abort.borrow()
    }

    async fn skip(&self, reason: &str) {
        self.summary.lock().await.skip(reason);
    }

    async fn finish(
        &self,
        client: &ClientFacts,
        mobile: &Mobile,
        claim: &Claim,
        end: Option<&Ended>,
        record: CallRecord,
        progress: &std::sync::Mutex<Progress>,
    ) {
        let camp = &self.campaign;
        let line = CallLine {
            client_id: client.id,
            phone: mobile.masked(),
            trunk: record.trunk.clone(),
            outcome: record.outcome,
            cause: record.hangup_cause.map(i64::from),
            ring_seconds: end.map_or(0, Ended::ring_seconds),
            talk_seconds: end.map_or(0, Ended::talk_seconds),
            detail: record.detail.clone(),
        };
        tracing::info!(
            client_id = line.client_id,
            phone = %line.phone,
            trunk = line.trunk.as_deref().unwrap_or("-"),
            outcome = %line.outcome,
            delivered = record.delivered,
            cause = line.cause.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            ring_s = line.ring_seconds,
            talk_s = line.talk_seconds,
            detail = line.detail.as_deref().unwrap_or(""),
            "call ended"
        );
        let written = camp.write(claim, &record).await;
        Self::note(progress, |p| p.claim = None);
        let mut s = self.summary.lock().await;
        if !written {
            s.unwritten += 1;
        }
        *s.outcomes.entry(line.outcome).or_insert(0) += 1;
        s.calls.push(line);
    }
}

fn dialled(
    end: &Ended,
    originated: NaiveDateTime,
    trunk: &str,
    channel_id: &str,
    mobile: &Mobile,
    min_heard_secs: u64,
) -> CallRecord {
    CallRecord {
        outcome: end.outcome,
        dialled: true,
        hangup_cause: end.cause.map(|c| c as i32),
        trunk: Some(trunk.to_owned()),
        channel_id: Some(channel_id.to_owned()),
        phone_e164: Some(mobile.e164()),
        answered_at: end.answered_at(originated),
        ended_at: end.ended_at(originated),
        ring_seconds: Some(end.ring_seconds()),
        billable_seconds: Some(end.talk_seconds()),
        detail: end.detail.clone(),
        delivered: is_delivered(end.outcome, end.heard_seconds(), min_heard_secs),
        heard_seconds: end.heard_seconds(),
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
