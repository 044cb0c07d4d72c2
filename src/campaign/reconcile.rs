//! Start-up reconciliation (SPEC §6): attempts this daemon claimed before it
//! stopped (crash, SIGKILL, power cut) and never wrote an outcome for. A
//! channel still alive on Asterisk is followed until it ends; one that is
//! gone is closed as `aborted`. Claims left by any host for over a day are
//! treated the same, so a dead PBX host cannot block its clients forever.

use std::sync::Arc;
use std::time::Duration;

use super::call::{follow, CallPlan};
use super::outcome::Outcome;
use super::pass::Campaign;
use crate::billing::{BillingError, CallRecord, Orphan};

/// Closes every orphaned attempt; returns how many there were.
pub async fn orphans(campaign: &Arc<Campaign>) -> Result<usize, BillingError> {
    let now = campaign.clock.now();
    let list = campaign
        .billing
        .orphans(&campaign.host, now - chrono::Duration::days(1))
        .await?;
    if list.is_empty() {
        return Ok(0);
    }
    let live = match campaign.ari.channels().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, orphans = list.len(), "cannot list channels; unfinished attempts stay claimed until the next start");
            return Ok(0);
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for orphan in &list {
        let base = orphan
            .channel_id
            .clone()
            .unwrap_or_else(|| orphan.claim.channel_id());
        let alive = live.iter().find(|c| {
            c.id == base || (c.id.starts_with(&format!("{base}-")) && !c.id.ends_with(";2"))
        });
        let campaign = campaign.clone();
        let orphan = orphan.clone();
        match alive {
            Some(ch) => {
                tracing::info!(client_id = orphan.claim.client_id, channel = %ch.id, "call from before the restart still up: following it");
                let inbox = campaign.router.register(&ch.id);
                let plan = CallPlan {
                    channel_id: ch.id.clone(),
                    endpoint: ch.name.clone(),
                    app: campaign.config.ari.outbound_app.clone(),
                    caller_id: None,
                    ring_timeout_secs: campaign.config.campaign.ring_timeout_secs,
                    call_timeout: Duration::from_secs(campaign.config.campaign.call_timeout_secs),
                    media: Vec::new(),
                    lang: campaign.config.campaign.lang.clone(),
                };
                tasks.spawn(async move {
                    let (_tx, abort) = tokio::sync::watch::channel(false);
                    let end = follow(
                        &campaign.ari,
                        &campaign.router,
                        &plan,
                        inbox,
                        tokio::time::Instant::now(),
                        abort,
                        campaign.ari_state.clone(),
                    )
                    .await;
                    let detail = format!(
                        "daemon restarted during the call (then {}, cause {:?})",
                        end.outcome, end.cause
                    );
                    close(&campaign, &orphan, Some(plan.channel_id.clone()), detail).await;
                });
            }
            None => {
                tasks.spawn(async move {
                    close(
                        &campaign,
                        &orphan,
                        orphan.channel_id.clone(),
                        "daemon stopped during the call; the channel is gone".into(),
                    )
                    .await;
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!(
        count = list.len(),
        "closed attempts left unfinished by a previous run"
    );
    Ok(list.len())
}

/// Records the orphan as `aborted`: whether the reminder was heard is not
/// known, so it is not counted as delivered, and it may go again at once.
async fn close(campaign: &Campaign, orphan: &Orphan, channel_id: Option<String>, detail: String) {
    let record = CallRecord {
        outcome: Outcome::Aborted,
        // The claim was made to dial; count it, so a crash loop cannot call anyone forever.
        dialled: true,
        hangup_cause: None,
        trunk: None,
        channel_id,
        phone_e164: None,
        answered_at: None,
        ended_at: campaign.clock.now(),
        ring_seconds: None,
        billable_seconds: None,
        detail: Some(detail),
    };
    tracing::warn!(
        client_id = orphan.claim.client_id,
        attempt_no = orphan.claim.attempt_no,
        detail = record.detail.as_deref().unwrap_or(""),
        "unfinished attempt closed as aborted"
    );
    campaign.write(&orphan.claim, &record).await;
}
