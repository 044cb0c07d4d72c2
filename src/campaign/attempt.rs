//! One attempt of one client: pacing, the claim, the trunk, the call, and
//! its outcome written at once — with what a panic would leave behind
//! cleaned up.

use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::time::Instant;

use super::call::{after, place, Amd, CallEnd, CallPlan, Ended, Interaction};

/// A claim older than this is checked again before its originate.
const CLAIM_RECHECK_AFTER: Duration = Duration::from_secs(60);
use super::pass::Shared;
use super::probe::Stage;
use super::summary::{CallLine, Skip};
use super::trunks::{Refusal, Use};
use crate::ari::{ConnState, Destination};
use crate::billing::{CallRecord, Claim};
use crate::config::Config;
use crate::rules::evidence::not_placed;
use crate::rules::outcome::{is_delivered, Outcome};
use crate::rules::phone::Mobile;
use crate::rules::selection::ClientFacts;
use crate::rules::trunks::{dial_string, Failover, Next, Try};

/// What a call task has done so far, kept outside the task so that, should
/// it panic, the pass can still hang its channel up, give its trunk back
/// and record its attempt.
#[derive(Default)]
pub(crate) struct Progress {
    claim: Option<Claim>,
    channel: Option<String>,
    trunk: Option<usize>,
    /// The pass's channel slot. Given back as soon as the call is over
    /// (`finish`), before the outcome write: the write needs no channel,
    /// and holding the slot through it left a freed channel idle for a
    /// database round trip before the next originate (BENCHMARKS.md
    /// "Where the last percent goes").
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The pass's look-ahead ticket (`pass.rs`): held from before the
    /// claim until the slot is given back, so that at most a few claims
    /// wait ready for a channel.
    ticket: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The media list with `{saldo}` and `{corte}` filled in for this client.
pub(crate) fn media_for(
    config: &Config,
    client: &ClientFacts,
    today: chrono::NaiveDate,
) -> Vec<String> {
    crate::rules::media::fill(
        &config.campaign.media,
        client.open_balance.as_deref(),
        client.corte,
        today,
    )
}

/// What the callee may do besides listen, from `[menu]`, `[transfer]`
/// and `[amd]` (README "The callee talks back").
pub(crate) fn interaction(config: &Config, client_id: i64) -> Interaction {
    let menu = &config.menu;
    Interaction {
        keys: menu.keys(),
        options: menu.media.clone(),
        opt_out_confirmation: menu.opt_out_media.clone(),
        wait: Duration::from_secs(menu.wait_secs),
        transfer: config.transfer.destination(),
        agent: Some(Destination {
            context: menu.agent_context.clone(),
            extension: client_id.to_string(),
            priority: 1,
        }),
        amd: config.amd.enabled.then(|| Amd {
            on_machine: config.amd.on_machine,
            destination: Destination {
                context: config.amd.context.clone(),
                extension: config.amd.extension().to_owned(),
                priority: 1,
            },
        }),
    }
}

impl Shared {
    /// `call_client`, with what a panic would leave behind cleaned up: the
    /// channel is hung up, the trunk given back and the attempt recorded
    /// `failed` with the panic's message (not dialled if it panicked
    /// before its originate); the pass goes on.
    /// One attempt holding `ticket`, its place in the pass's look-ahead;
    /// it takes one of the `slots` (channels) once claimed, and gives both
    /// back once no channel of the attempt can exist any more.
    pub(super) async fn call_client_guarded(
        &self,
        client: Box<ClientFacts>,
        mobile: Mobile,
        ticket: tokio::sync::OwnedSemaphorePermit,
        slots: std::sync::Arc<tokio::sync::Semaphore>,
    ) {
        use futures_util::FutureExt;
        let progress = std::sync::Mutex::new(Progress {
            ticket: Some(ticket),
            ..Progress::default()
        });
        let client_id = client.id;
        let phone = mobile.masked();
        let run = std::panic::AssertUnwindSafe(self.call_client(&client, mobile, slots, &progress));
        let Err(panic) = run.catch_unwind().await else {
            self.release_slot(client_id, &progress);
            return;
        };
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
        // Boxed: its locals would otherwise be laid out beside the call's
        // own future in every call task, about 0.5 kB each, for a path no
        // call normally takes (BENCHMARKS.md "Cost per call: what changed
        // on 2026-12-03 (evening)").
        Box::pin(self.after_panic(client_id, phone, progress, message)).await;
    }

    /// What a panicked call task leaves behind, cleaned up (see
    /// `call_client_guarded`).
    async fn after_panic(
        &self,
        client_id: i64,
        phone: String,
        progress: Progress,
        message: String,
    ) {
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
            return self.skip(Skip::InternalError).await;
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
        let written = camp.billing.write_outcome(&claim, &record).await;
        camp.hold(&claim, false);
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

    /// The order matters for throughput (BENCHMARKS.md "Where the last
    /// percent goes"): the claim, a MySQL round trip of a few to tens of
    /// ms under load, is made while every channel is still busy, so that a freed
    /// channel waits only for pacing and the originate. A claim that no
    /// channel takes in time is withdrawn (`Billing::withdraw`).
    async fn call_client(
        &self,
        client: &ClientFacts,
        mobile: Mobile,
        slots: std::sync::Arc<tokio::sync::Semaphore>,
        progress: &std::sync::Mutex<Progress>,
    ) {
        let camp = &self.campaign;
        let cfg = &camp.config.campaign;
        if let Some(reason) = self.stop_reason() {
            return self.skip(reason).await;
        }
        // Nothing is claimed while the event socket is down: a claim would
        // wait out the outage unused, and hold the client from other hosts.
        if !self.connected().await {
            return self.skip(Skip::PassEndedFirst).await;
        }
        let now = camp.now();
        self.probe(client.id, Stage::Ticket);
        let claim = match camp
            .billing
            .claim(
                client.id,
                crate::billing::Seen::of(client),
                client.telefono.as_deref(),
                &camp.host,
                now,
            )
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return self.skip(Skip::ClaimedElsewhere).await,
            Err(e) => {
                tracing::error!(client_id = client.id, error = %e, "cannot claim attempt");
                return self.skip(Skip::ClaimFailed).await;
            }
        };
        self.probe(client.id, Stage::Claimed);
        camp.hold(&claim, true);
        Self::note(progress, |p| p.claim = Some(claim.clone()));
        let claimed = Instant::now();

        // A channel: the claim waits here, ready, until a call ends.
        let mut abort = self.abort.clone();
        let mut drain = self.opts.drain.clone();
        let slot = tokio::select! {
            s = slots.acquire_owned() => s.ok(),
            _ = abort.wait_for(|a| *a) => None,
            _ = async {
                match drain.as_mut() {
                    Some(d) => { let _ = d.wait_for(|d| *d).await; }
                    None => std::future::pending().await,
                }
            } => None,
        };
        let Some(slot) = slot else {
            let reason = self.stop_reason().unwrap_or(Skip::PassEndedFirst);
            return self.withdraw(client, &claim, reason, progress).await;
        };
        Self::note(progress, |p| p.slot = Some(slot));
        self.probe(client.id, Stage::Granted);
        // Pacing: calls_per_second originates at most. No timer when the
        // turn is now: a timer rounds up to the next millisecond tick.
        {
            let mut next = self.pacing.lock().await;
            let now = Instant::now();
            let turn = (*next).max(now);
            *next = after(turn, Duration::from_secs_f64(1.0 / cfg.calls_per_second));
            drop(next);
            if turn > now {
                tokio::time::sleep_until(turn).await;
            }
        }
        self.probe(client.id, Stage::Paced);
        // Never originate while the event socket is down: Asterisk would hang up the answered call.
        if !self.connected().await {
            return self
                .withdraw(client, &claim, Skip::PassEndedFirst, progress)
                .await;
        }
        if let Some(reason) = self.stop_reason() {
            return self.withdraw(client, &claim, reason, progress).await;
        }
        let media = media_for(&camp.config, client, camp.now().date());
        let mut failover = Failover::new(camp.trunks.len());
        // A refused originate created no channel, so its id is used again;
        // a call that existed (congestion, next trunk) needs a new one.
        let mut channel_id = claim.channel_id();
        let mut placed_calls = 0;
        let mut last_refusal = None;
        loop {
            let (avoid, never) = (failover.avoid(), failover.never());
            let acquired = tokio::select! {
                t = camp.trunks.acquire(&avoid, &never) => Some(t),
                _ = abort.wait_for(|a| *a) => None,
            };
            let Some((index, trunk)) = acquired else {
                break;
            };
            Self::note(progress, |p| p.trunk = Some(index));
            self.probe(client.id, Stage::Trunk);
            // The socket may have dropped while we waited for a trunk.
            if !camp.ari_state.borrow().is_connected() {
                camp.trunks.release(index, Use::Neutral);
                Self::note(progress, |p| p.trunk = None);
                if !self.connected().await {
                    break;
                }
                continue;
            }
            // After a long wait for a trunk, another host may have taken the
            // claim for an orphan (campaign.orphan_after_mins): look first.
            if claimed.elapsed() > CLAIM_RECHECK_AFTER {
                if let Ok(None) = camp.billing.open_claim(&claim).await {
                    tracing::warn!(
                        client_id = client.id,
                        "the claim was closed elsewhere while waiting for a trunk; not dialling"
                    );
                    camp.trunks.release(index, Use::Neutral);
                    camp.hold(&claim, false);
                    Self::note(progress, |p| {
                        p.trunk = None;
                        p.claim = None;
                    });
                    return self.skip(Skip::ClaimedElsewhere).await;
                }
            }
            Self::note(progress, |p| p.channel = Some(channel_id.clone()));
            // Boxed, as the client is (`pass.rs`): held for the call's life.
            let plan = Box::new(CallPlan {
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
                interaction: interaction(&camp.config, client.id),
            });
            let originated = camp.now();
            camp.trunks.originating(index);
            self.probe(client.id, Stage::Originate);
            let end = place(
                &camp.ari,
                &camp.router,
                &plan,
                self.abort.clone(),
                camp.ari_state.clone(),
            )
            .await;
            self.probe(client.id, Stage::Ended);
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
                    let how = match camp.trunks.refused(index) {
                        Refusal::Asterisk => {
                            tracing::warn!(client_id = client.id, trunk = %trunk.name, status, %message, "Asterisk refused the originate on every trunk; no attempt spent, trying again");
                            Try::RefusedByAsterisk
                        }
                        Refusal::Trunk => {
                            tracing::warn!(client_id = client.id, trunk = %trunk.name, status, %message, "originate refused; trying the next trunk");
                            Try::Refused
                        }
                    };
                    if failover.after(index, how) == Next::GiveUp {
                        break;
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
                        .finish(client, &mobile, &claim, None, record, progress)
                        .await;
                }
                CallEnd::Ended(end) => {
                    let how = if end.trunk_congested {
                        Try::CongestedBeforeRinging
                    } else {
                        Try::Placed
                    };
                    let blame = match failover.after(index, how) {
                        Next::Finish { blame } => blame,
                        next => {
                            camp.trunks.release(index, Use::Neutral);
                            if next == Next::GiveUp {
                                break;
                            }
                            tracing::warn!(client_id = client.id, trunk = %trunk.name, cause = ?end.cause, "congestion before ringing; trying the next trunk");
                            placed_calls += 1;
                            channel_id = format!("{}-{}", claim.channel_id(), placed_calls + 1);
                            // Written before the next originate, so a crash leaves it findable.
                            if let Err(e) = camp.billing.set_channel(&claim, &channel_id).await {
                                tracing::warn!(client_id = client.id, error = %e, "cannot record the retry's channel id");
                            }
                            continue;
                        }
                    };
                    let answered = end.answered_after.is_some();
                    camp.trunks.release(
                        index,
                        Use::Placed {
                            answered,
                            at: end.started,
                        },
                    );
                    // Another trunk got through: the earlier congestion was those trunks' fault.
                    for t in blame {
                        camp.trunks.blame(t);
                    }
                    if end.to_agent {
                        camp.handed_to_agent
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let record = dialled(
                        &end,
                        originated,
                        Some(&trunk.name),
                        &channel_id,
                        Some(&mobile),
                        &camp.config,
                    );
                    return self
                        .finish(client, &mobile, &claim, Some(&end), record, progress)
                        .await;
                }
            }
        }
        // Every trunk refused again and again, or the pass ended while waiting
        // for one: nothing was dialled, so no attempt is spent.
        let (outcome, detail) = not_placed(last_refusal.as_deref(), *self.abort.borrow());
        let record = CallRecord::not_dialled(outcome, camp.now(), detail);
        self.finish(client, &mobile, &claim, None, record, progress)
            .await;
    }

    /// Gives the attempt's channel slot and look-ahead ticket back (once;
    /// later calls do nothing).
    fn release_slot(&self, client_id: i64, progress: &std::sync::Mutex<Progress>) {
        let (slot, ticket) = {
            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
            (p.slot.take(), p.ticket.take())
        };
        if slot.is_some() {
            self.probe(client_id, Stage::Released);
        }
        drop(slot);
        drop(ticket);
    }

    /// Why nothing new may be dialled now, if so: the pass is over, the
    /// daemon is stopping, or the calling window has closed (no call after
    /// it, even from a pass that began inside it).
    fn stop_reason(&self) -> Option<Skip> {
        if *self.abort.borrow() {
            return Some(Skip::PassEndedFirst);
        }
        if self.opts.draining() {
            return Some(Skip::ShuttingDown);
        }
        let camp = &self.campaign;
        if self.window_shut.load(std::sync::atomic::Ordering::Relaxed)
            || camp.window(&self.opts).check_local(camp.now()).is_err()
        {
            self.window_shut
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Some(Skip::WindowClosedMidPass);
        }
        None
    }

    /// A claim made ahead and not dialled: given back, counted as skipped.
    async fn withdraw(
        &self,
        client: &ClientFacts,
        claim: &Claim,
        reason: Skip,
        progress: &std::sync::Mutex<Progress>,
    ) {
        let camp = &self.campaign;
        self.release_slot(client.id, progress);
        camp.billing
            .withdraw(claim, camp.now(), reason.as_str())
            .await;
        camp.hold(claim, false);
        Self::note(progress, |p| p.claim = None);
        self.skip(reason).await;
    }

    /// Records `stage` of `client_id` when the benchmark asked (`probe.rs`).
    fn probe(&self, client_id: i64, stage: Stage) {
        if let Some(p) = &self.opts.probe {
            p.mark(client_id, stage);
        }
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

    async fn skip(&self, reason: Skip) {
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
        // The call is over (ended, or never placed): its channel slot goes
        // to the next client now, not after the write.
        self.release_slot(client.id, progress);
        let written = camp.billing.write_outcome(claim, &record).await;
        camp.hold(claim, false);
        Self::note(progress, |p| p.claim = None);
        let mut s = self.summary.lock().await;
        if !written {
            s.unwritten += 1;
        }
        *s.outcomes.entry(line.outcome).or_insert(0) += 1;
        s.calls.push(line);
    }
}

/// The record of a call Asterisk placed, as `follow` saw it end (also for
/// calls adopted after a restart, whose trunk is not known).
pub(crate) fn dialled(
    end: &Ended,
    originated: NaiveDateTime,
    trunk: Option<&str>,
    channel_id: &str,
    mobile: Option<&Mobile>,
    config: &Config,
) -> CallRecord {
    let message_counts = end.message_left && config.amd.message_counts_as_delivered;
    CallRecord {
        outcome: end.outcome,
        dialled: true,
        hangup_cause: end.cause.map(|c| c as i32),
        trunk: trunk.map(str::to_owned),
        channel_id: Some(channel_id.to_owned()),
        phone_e164: mobile.map(Mobile::e164),
        answered_at: end.answered_at(originated),
        ended_at: end.ended_at(originated),
        ring_seconds: Some(end.ring_seconds()),
        billable_seconds: Some(end.talk_seconds()),
        detail: end.detail.clone(),
        delivered: is_delivered(
            end.outcome,
            end.heard_seconds(),
            config.campaign.min_heard_secs,
            message_counts,
        ),
        heard_seconds: end.heard_seconds(),
    }
}
