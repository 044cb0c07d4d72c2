//! Attempts left without an outcome (README "When things break"): the
//! daemon was killed, the host lost power, or a claim's owner vanished.
//!
//! At every start and before every pass, each open claim of this host, and
//! each of another host once older than `campaign.orphan_after_mins`, is
//! checked against Asterisk by the channel id written with the claim:
//! - answered and still up: what the callee heard is unknown, so the
//!   channel is hung up now and the attempt recorded `aborted`;
//! - still ringing: adopted, followed as an ordinary call (the prompt on
//!   answer, its normal outcome);
//! - gone: `aborted`.
//!
//! Each counts as one attempt, written once (the outcome write only
//! touches a claim that has none). A channel of ours that enters Stasis
//! while nobody follows it (answered between a crash and this check, or an
//! originate whose answer was lost) is adopted the same way by the event
//! dispatcher, through `adopt_answered`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::call::{follow, CallPlan, Ended};
use super::pass::Campaign;
use crate::ari::model::Channel;
use crate::ari::router::Inbox;
use crate::billing::{BillingError, CallRecord, Claim, Orphan};
use crate::rules::outcome::Outcome;
use crate::rules::phone::normalize;

/// Closes or adopts every orphaned attempt; returns how many there were.
/// Adopted calls go on in the background (`Campaign::wait_adopted`).
pub(crate) async fn orphans(campaign: &Arc<Campaign>) -> Result<usize, BillingError> {
    let now = campaign.clock.now();
    let stale = now - chrono::Duration::minutes(campaign.config.campaign.orphan_after_mins as i64);
    let list: Vec<Orphan> = campaign
        .billing
        .orphans(&campaign.host, stale)
        .await?
        .into_iter()
        // A call this process follows or holds right now is nobody's orphan.
        .filter(|o| !campaign.router.is_registered(&channel_of(o)) && !campaign.holds(&o.claim))
        .collect();
    if list.is_empty() {
        return Ok(0);
    }
    let live = match campaign.ari.channels().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, orphans = list.len(), "cannot list channels; unfinished attempts stay claimed until the next check");
            return Ok(0);
        }
    };
    for orphan in &list {
        let id = channel_of(orphan);
        // Claims from before channel ids were written with them: a retry
        // on another trunk has the id with a `-<try>` suffix.
        let alive = live.iter().find(|c| {
            c.id == id
                || (orphan.channel_id.is_none()
                    && c.id.starts_with(&format!("{id}-"))
                    && !c.id.ends_with(";2"))
        });
        match alive {
            None => {
                close(
                    campaign,
                    orphan,
                    orphan.channel_id.clone(),
                    "daemon stopped during the call; the channel is gone",
                )
                .await;
            }
            Some(ch) if ch.state == "Up" => {
                // The dispatcher may have just adopted it: then it is followed.
                if campaign.router.try_register(&ch.id, None).is_none() {
                    continue;
                }
                tracing::warn!(client_id = orphan.claim.client_id, channel = %ch.id, "call answered before the restart still up: hanging it up");
                if let Err(e) = campaign.ari.hangup(&ch.id, "normal").await {
                    if !e.is_not_found() {
                        tracing::error!(channel = %ch.id, error = %e, "cannot hang up an orphaned call; it stays claimed until the next check");
                        campaign.router.unregister(&ch.id);
                        continue;
                    }
                }
                close(
                    campaign,
                    orphan,
                    Some(ch.id.clone()),
                    "answered before the daemon restarted: hung up, what the callee heard is unknown",
                )
                .await;
                campaign.router.unregister(&ch.id);
            }
            Some(ch) => {
                let Some(inbox) = campaign.router.try_register(&ch.id, None) else {
                    continue; // just adopted by the dispatcher
                };
                tracing::info!(client_id = orphan.claim.client_id, channel = %ch.id, state = %ch.state, "call from before the restart still ringing: adopting it");
                spawn_adoption(campaign, orphan.clone(), ch.clone(), inbox);
            }
        }
    }
    tracing::info!(
        count = list.len(),
        "closed or adopted attempts left unfinished by an earlier run"
    );
    Ok(list.len())
}

/// A channel of ours entered Stasis and nobody follows it. `inbox` was
/// registered by the dispatcher with that `StasisStart` in it. If its
/// attempt is still open the call is adopted (the callee gets the prompt);
/// otherwise it is a leftover and is hung up.
pub(crate) async fn adopt_answered(
    campaign: Arc<Campaign>,
    channel: Channel,
    claim: Claim,
    inbox: Inbox,
) {
    // This process is closing that attempt itself (an originate found not
    // placed): the channel is a leftover.
    let open = if campaign.holds(&claim) {
        Ok(None)
    } else {
        campaign.billing.open_claim(&claim).await
    };
    match open {
        Ok(Some(orphan)) => {
            tracing::info!(client_id = claim.client_id, channel = %channel.id, "answered call of an open attempt nobody followed: adopting it");
            spawn_adoption(&campaign, orphan, channel, inbox);
        }
        Ok(None) => {
            tracing::warn!(channel = %channel.id, "answered call of an attempt already closed: hanging it up");
            campaign.router.unregister(&channel.id);
            let _ = campaign.ari.hangup(&channel.id, "normal").await;
        }
        Err(e) => {
            // Unknown: leave the call alone rather than hang up on a callee;
            // the next orphan check decides once MySQL answers.
            tracing::error!(channel = %channel.id, error = %e, "cannot check the attempt of an unfollowed call; leaving it to the next orphan check");
            campaign.router.unregister(&channel.id);
        }
    }
}

fn channel_of(orphan: &Orphan) -> String {
    orphan
        .channel_id
        .clone()
        .unwrap_or_else(|| orphan.claim.channel_id())
}

/// Follows an adopted call to its end in the background and records its
/// outcome, counted by `Campaign::wait_adopted`.
fn spawn_adoption(campaign: &Arc<Campaign>, orphan: Orphan, channel: Channel, inbox: Inbox) {
    campaign.adopted.fetch_add(1, Ordering::SeqCst);
    let campaign = campaign.clone();
    tokio::spawn(async move {
        // Counted down however the task ends, a panic included.
        let _done = AdoptionDone(campaign.clone());
        let facts = campaign
            .billing
            .client_facts(orphan.claim.client_id)
            .await
            .ok()
            .flatten();
        let cfg = &campaign.config.campaign;
        let media = match &facts {
            Some(f) => super::attempt::media_for(&campaign.config, f, campaign.now().date()),
            None => cfg.media.clone(),
        };
        // The per-call timeout runs from the original originate (≈ the claim).
        let since_claim = (campaign.clock.now() - orphan.claimed_at)
            .to_std()
            .unwrap_or_default();
        let started = tokio::time::Instant::now()
            .checked_sub(since_claim)
            .unwrap_or_else(tokio::time::Instant::now);
        let plan = CallPlan {
            channel_id: channel.id.clone(),
            endpoint: channel.name.clone(),
            app: campaign.config.ari.outbound_app.clone(),
            caller_id: None,
            ring_timeout_secs: cfg.ring_timeout_secs,
            call_timeout: Duration::from_secs(cfg.call_timeout_secs),
            media,
            lang: cfg.lang.clone(),
            asterisk_started: campaign.asterisk_started.borrow().clone(),
            panic_on_answer: false,
            interaction: super::attempt::interaction(&campaign.config, orphan.claim.client_id),
        };
        let end = follow(
            &campaign.ari,
            &campaign.router,
            &plan,
            inbox,
            started,
            campaign.adopt_abort.subscribe(),
            campaign.ari_state.clone(),
        )
        .await;
        let phone = facts
            .and_then(|f| f.telefono)
            .and_then(|t| normalize(&t).ok());
        let record = adopted_record(&campaign, &orphan, &plan.channel_id, &end, phone);
        tracing::info!(
            client_id = orphan.claim.client_id,
            phone = %phone_masked(&record),
            trunk = "-",
            outcome = %record.outcome,
            delivered = record.delivered,
            cause = record.hangup_cause.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            ring_s = end.ring_seconds(),
            talk_s = end.talk_seconds(),
            detail = record.detail.as_deref().unwrap_or(""),
            "call ended (adopted after a restart)"
        );
        campaign.billing.write_outcome(&orphan.claim, &record).await;
    });
}

struct AdoptionDone(Arc<Campaign>);

impl Drop for AdoptionDone {
    fn drop(&mut self) {
        self.0.adopted.fetch_sub(1, Ordering::SeqCst);
        self.0.adopted_done.notify_waiters();
    }
}

fn phone_masked(r: &CallRecord) -> String {
    r.phone_e164
        .as_deref()
        .map_or_else(|| "-".to_owned(), crate::rules::phone::mask)
}

fn adopted_record(
    campaign: &Campaign,
    orphan: &Orphan,
    channel_id: &str,
    end: &Ended,
    phone: Option<crate::rules::phone::Mobile>,
) -> CallRecord {
    let record = super::attempt::dialled(
        end,
        orphan.claimed_at,
        None,
        channel_id,
        phone.as_ref(),
        &campaign.config,
    );
    CallRecord {
        detail: Some(match &end.detail {
            Some(d) => format!("adopted after a restart; {d}"),
            None => "adopted after a restart".to_owned(),
        }),
        ..record
    }
}

/// Records the orphan as `aborted`: whether the reminder was heard is not
/// known, so it is not delivered, and it may go again at once. The claim
/// was made to dial, so it counts: a crash loop cannot call anyone forever.
async fn close(campaign: &Campaign, orphan: &Orphan, channel_id: Option<String>, detail: &str) {
    let record = CallRecord::closed(
        Outcome::Aborted,
        channel_id,
        campaign.clock.now(),
        detail.to_owned(),
    );
    tracing::warn!(
        client_id = orphan.claim.client_id,
        attempt_no = orphan.claim.attempt_no,
        detail,
        "unfinished attempt closed as aborted"
    );
    campaign.billing.write_outcome(&orphan.claim, &record).await;
}
