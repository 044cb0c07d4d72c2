//! One outbound call through ARI, from originate to its outcome (README "A pass"):
//! StasisStart → play the prompt → PlaybackFinished → hang up, with the
//! per-call timeout and the pass's abort signal.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::ari::router::{Inbox, Router};
use crate::ari::{AriClient, AriError, ConnState, Event, Originate};
use crate::rules::evidence::{decide, Daemon, Evidence, Lost, Prompt};
use crate::rules::outcome::Outcome;

/// What to dial and play.
#[derive(Debug, Clone)]
pub struct CallPlan {
    pub channel_id: String,
    pub endpoint: String,
    pub app: String,
    pub caller_id: Option<String>,
    pub ring_timeout_secs: u64,
    pub call_timeout: Duration,
    pub media: Vec<String>,
    pub lang: String,
    /// Asterisk's `startup_time` when the call began: a channel lost while
    /// the event socket was down was torn down by a restart if it changed.
    pub asterisk_started: Option<String>,
    /// Test hook: the call task panics when the call is answered.
    pub panic_on_answer: bool,
}

/// How a call attempt ended.
#[derive(Debug, Clone)]
pub enum CallEnd {
    /// Asterisk refused the originate (4xx/5xx): the trunk's problem.
    Refused { status: u16, message: String },
    /// The originate never reached Asterisk (connection lost, timeout and no
    /// such channel): nothing was dialled.
    NotPlaced { reason: String },
    /// The call happened; `outcome` is final.
    Ended(Ended),
}

#[derive(Debug, Clone)]
pub struct Ended {
    pub outcome: Outcome,
    pub cause: Option<i64>,
    /// Congestion before any ringing: the trunk's fault, try the next one.
    pub trunk_congested: bool,
    pub started: Instant,
    pub answered_after: Option<Duration>,
    pub lasted: Duration,
    pub detail: Option<String>,
    /// How much of the prompt the callee heard (answered calls).
    pub heard: Option<Duration>,
}

impl Ended {
    /// Seconds from originate to answer (or to the end, unanswered).
    pub fn ring_seconds(&self) -> u32 {
        self.answered_after.unwrap_or(self.lasted).as_secs() as u32
    }

    /// Seconds from answer to hang-up.
    pub fn talk_seconds(&self) -> u32 {
        self.answered_after
            .map_or(0, |a| self.lasted.saturating_sub(a).as_secs() as u32)
    }

    /// Local wall-clock answer time, given the local time of the originate.
    pub fn answered_at(&self, originated: NaiveDateTime) -> Option<NaiveDateTime> {
        self.answered_after
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| originated + d)
    }

    pub fn ended_at(&self, originated: NaiveDateTime) -> NaiveDateTime {
        originated + chrono::Duration::from_std(self.lasted).unwrap_or_default()
    }

    /// Whole seconds of the prompt heard.
    pub fn heard_seconds(&self) -> Option<u32> {
        self.heard.map(|h| h.as_secs() as u32)
    }
}

/// After our channel is gone, how long to wait for the `;2` half's cause.
const OTHER_HALF_GRACE: Duration = Duration::from_millis(500);
/// A failed playback while the channel stays up this long means a missing sound.
const MISSING_SOUND_GRACE: Duration = Duration::from_millis(300);
/// After we hang up, how long before we stop waiting for Asterisk's word.
const HANGUP_GRACE: Duration = Duration::from_secs(5);
/// An originate with no HTTP answer may still have been placed: this long
/// without an event and without the channel existing means it was not.
const PLACEMENT_GRACE: Duration = Duration::from_secs(5);
const PLACEMENT_POLL: Duration = Duration::from_millis(500);

/// `now + d`, or a year from now when that would overflow (`d` comes from
/// configuration, which bounds it; this keeps a slip from panicking).
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

/// Places the call and follows it to the end. `abort` turning true hangs
/// the call up and ends it as `aborted`.
pub(crate) async fn place(
    ari: &AriClient,
    router: &Arc<Router>,
    plan: &CallPlan,
    abort: watch::Receiver<bool>,
    ari_state: watch::Receiver<ConnState>,
) -> CallEnd {
    // Register first: Asterisk may send events before it answers the originate.
    let mut inbox = router.register(&plan.channel_id);
    let started = Instant::now();
    let request = Originate {
        endpoint: plan.endpoint.clone(),
        app: plan.app.clone(),
        channel_id: Some(plan.channel_id.clone()),
        caller_id: plan.caller_id.clone(),
        timeout_secs: Some(plan.ring_timeout_secs),
        ..Originate::default()
    };
    match ari.originate(&request).await {
        Ok(_) => {}
        // Our id is alive: a retried request that did get through. Follow it.
        Err(e) if e.status().map(|s| s.as_u16()) == Some(409) => {}
        Err(AriError::Status {
            status, message, ..
        }) => {
            router.unregister(&plan.channel_id);
            return CallEnd::Refused {
                status: status.as_u16(),
                message,
            };
        }
        Err(e) if e.never_reached_asterisk() => {
            router.unregister(&plan.channel_id);
            return CallEnd::NotPlaced {
                reason: e.to_string(),
            };
        }
        // No answer (timeout, connection lost mid-request): Asterisk may
        // have placed the call all the same. It was, if its events come or
        // the channel exists; it was not, if neither within a few seconds.
        Err(e) => {
            tracing::warn!(channel = %plan.channel_id, error = %e, "originate unanswered; checking whether Asterisk placed the call");
            if !placed(ari, &plan.channel_id, &mut inbox).await {
                router.unregister(&plan.channel_id);
                return CallEnd::NotPlaced {
                    reason: format!("{e}; no such channel and no event after {PLACEMENT_GRACE:?}"),
                };
            }
            tracing::info!(channel = %plan.channel_id, "the unanswered originate was placed: following the call");
        }
    }

    CallEnd::Ended(follow(ari, router, plan, inbox, started, abort, ari_state).await)
}

/// Whether an originate whose answer never came was placed: an event of
/// the call arrives (it is kept for `follow`), or `GET` finds the channel.
/// Only Asterisk's own 404 says the channel is not there; an unanswered
/// `GET` says nothing, and the call is then taken as placed rather than
/// risk recording a ringing call as never dialled.
async fn placed(ari: &AriClient, channel_id: &str, inbox: &mut Inbox) -> bool {
    let give_up = Instant::now() + PLACEMENT_GRACE;
    loop {
        tokio::select! {
            biased;
            env = inbox.recv() => {
                if let Some(env) = env {
                    inbox.unread(env);
                    return true;
                }
                return false;
            }
            _ = tokio::time::sleep(PLACEMENT_POLL) => {
                let absent = match ari.channel(channel_id).await {
                    Ok(_) => return true,
                    Err(e) => e.is_not_found(),
                };
                if Instant::now() >= give_up {
                    // An event may have come while the GET waited.
                    if let Some(env) = inbox.try_recv() {
                        inbox.unread(env);
                        return true;
                    }
                    return !absent;
                }
            }
        }
    }
}

/// Follows a placed call to its end. Also used for calls found alive after
/// a restart, whose `inbox` is registered by the caller.
pub async fn follow(
    ari: &AriClient,
    router: &Arc<Router>,
    plan: &CallPlan,
    mut inbox: Inbox,
    started: Instant,
    mut abort: watch::Receiver<bool>,
    mut ari_state: watch::Receiver<ConnState>,
) -> Ended {
    // Only socket changes from now on matter (a clone keeps its source's
    // last-seen version, which may predate an old reconnect).
    ari_state.borrow_and_update();
    let local = plan.endpoint.starts_with("Local/");
    let mut lost = false;
    let mut ev = Evidence::new(plan.channel_id.clone());
    let mut answered_after = None;
    let mut timed_out = false;
    let mut aborted = *abort.borrow();
    let mut missing_sound: Option<Instant> = None;
    let mut missing = false;
    let mut detail = None;
    let mut hung_up_at: Option<Instant> = None;
    let mut finish_at: Option<Instant> = None;
    let mut prompt_started: Option<Instant> = None;
    let mut prompt_cut: Option<Instant> = None;
    let never = after(started, Duration::from_secs(86_400 * 365));
    let timeout_at = after(started, plan.call_timeout);
    if aborted {
        hangup(ari, &plan.channel_id, &mut hung_up_at).await;
    }

    loop {
        tokio::select! {
            biased;
            env = inbox.recv() => {
                let Some(env) = env else { break };
                ev.observe(&env.event);
                // How much of the prompt was heard: from its start to its end,
                // or to the call's end if that comes first (all within ms
                // of each other when the callee hangs up).
                match &env.event {
                    Event::PlaybackStarted { .. } if ev.prompt == Prompt::Playing => {
                        prompt_started.get_or_insert_with(Instant::now);
                    }
                    Event::PlaybackFinished { .. } | Event::StasisEnd { .. } | Event::ChannelDestroyed { .. }
                        if prompt_started.is_some() =>
                    {
                        prompt_cut.get_or_insert_with(Instant::now);
                    }
                    _ => {}
                }
                match &env.event {
                    Event::StasisStart { channel, .. } if channel.id == plan.channel_id => {
                        if plan.panic_on_answer {
                            panic!("test hook: call task panicked on answer of {}", plan.channel_id);
                        }
                        answered_after.get_or_insert(started.elapsed());
                        if hung_up_at.is_none() {
                            if let Err(e) = ari.play(&plan.channel_id, &plan.media, Some(&plan.lang), None).await {
                                if !e.is_not_found() {
                                    tracing::error!(channel = %plan.channel_id, error = %e, "cannot play the prompt; hanging up");
                                    detail = Some(format!("play refused: {e}"));
                                    missing = true;
                                    hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                                }
                            }
                        }
                    }
                    Event::PlaybackFinished { playback } if ev.answered => match ev.prompt {
                        Prompt::Done => hangup(ari, &plan.channel_id, &mut hung_up_at).await,
                        Prompt::Failed { hangup_seen: false } => {
                            missing_sound = Some(Instant::now() + MISSING_SOUND_GRACE);
                            detail = Some(format!("prompt failed at {} (lang {}): sound missing on Asterisk?", playback.media_uri, plan.lang));
                        }
                        _ => {}
                    },
                    _ => {}
                }
                if ev.own_destroyed && (!local || ev.other_destroyed) {
                    break;
                }
                if ev.own_destroyed && finish_at.is_none() {
                    finish_at = Some(Instant::now() + OTHER_HALF_GRACE);
                }
            }
            _ = sleep_until(finish_at.unwrap_or(never)), if finish_at.is_some() => break,
            _ = sleep_until(missing_sound.unwrap_or(never)), if missing_sound.is_some() => {
                missing_sound = None;
                if !ev.own_destroyed {
                    missing = true;
                    tracing::error!(channel = %plan.channel_id, media = ?plan.media, lang = %plan.lang,
                        "PROMPT NOT PLAYED: Asterisk could not play the configured sound; check campaign.media and the sound files");
                    hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                }
            }
            _ = sleep_until(timeout_at), if !timed_out && hung_up_at.is_none() => {
                timed_out = true;
                hangup(ari, &plan.channel_id, &mut hung_up_at).await;
            }
            // Events sent while the socket was down are lost for good: after a
            // reconnect, ask Asterisk whether the channel is still there.
            changed = ari_state.changed() => {
                let reconnected = changed.is_ok() && ari_state.borrow_and_update().is_connected();
                if reconnected {
                    if let Err(e) = ari.channel(&plan.channel_id).await {
                        if e.is_not_found() {
                            lost = true;
                            break;
                        }
                    }
                }
                if changed.is_err() {
                    // The supervisor is gone (shutdown): keep going on REST alone.
                    ari_state = watch::channel(ConnState::Connected { epoch: 0 }).1;
                }
            }
            changed = abort.changed(), if !aborted => {
                if changed.is_err() || *abort.borrow() {
                    aborted = true;
                    hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                }
            }
            _ = sleep_until(hung_up_at.map_or(never, |t| t + HANGUP_GRACE)), if hung_up_at.is_some() => {
                // Asterisk said nothing after our DELETE (events lost while the
                // socket was down?): ask directly.
                match ari.channel(&plan.channel_id).await {
                    Err(e) if e.is_not_found() => break,
                    _ => {
                        hung_up_at = None;
                        hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                    }
                }
            }
        }
    }
    router.unregister(&plan.channel_id);
    if missing_sound.is_some() && !missing {
        // The playback failed and the channel went within the grace: the callee hung up.
        ev.prompt = Prompt::Failed { hangup_seen: true };
    }

    // A channel that vanished while the socket was down: if Asterisk
    // restarted meanwhile, the restart tore it down (never the callee).
    let restarted = if lost && !ev.own_destroyed {
        match (&plan.asterisk_started, ari.asterisk_info().await) {
            (Some(before), Ok(now)) => now.status.startup_time != *before,
            _ => false,
        }
    } else {
        false
    };
    let heard = prompt_started.map(|from| {
        prompt_cut
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(from)
    });
    let decided = decide(
        &ev,
        &Daemon {
            aborted,
            timed_out,
            prompt_problem: detail.filter(|_| missing),
            lost: (lost && !ev.own_destroyed).then_some(if restarted {
                Lost::InRestart
            } else {
                Lost::Unseen
            }),
            heard,
        },
    );
    Ended {
        outcome: decided.outcome,
        cause: ev.cause(),
        trunk_congested: decided.trunk_congested,
        started,
        answered_after,
        lasted: started.elapsed(),
        detail: decided.detail,
        heard,
    }
}

async fn hangup(ari: &AriClient, channel: &str, hung_up_at: &mut Option<Instant>) {
    *hung_up_at = Some(Instant::now());
    if let Err(e) = ari.hangup(channel, "normal").await {
        if !e.is_not_found() {
            tracing::warn!(%channel, error = %e, "hang-up request failed; will check again");
        }
    }
}
