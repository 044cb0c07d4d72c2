//! One outbound call through ARI, from originate to its outcome (README "A pass"):
//! StasisStart → play the prompt → PlaybackFinished → hang up, with the
//! per-call timeout and the pass's abort signal; with the keypad menu or
//! the machine check on, the answered part follows `rules::script` (README
//! "The callee talks back").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::ari::router::{Inbox, Router};
use crate::ari::{AriClient, AriError, ConnState, Destination, Event, Originate};
use crate::rules::evidence::{decide, Counted, Daemon, Evidence, Lost, Prompt};
use crate::rules::outcome::Outcome;
use crate::rules::script::{Action, Ending, OnMachine, Prompt as ScriptPrompt, Script, Step};

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
    /// What the callee may do besides listen (README "The callee talks back").
    pub interaction: Interaction,
}

/// The keypad menu and the machine check of one call; the default (no
/// keys, no check) is the plain reminder.
#[derive(Debug, Clone, Default)]
pub struct Interaction {
    pub keys: BTreeMap<char, Action>,
    pub options: Vec<String>,
    pub opt_out_confirmation: Vec<String>,
    pub wait: Duration,
    /// `transfer`: the `[transfer]` destination.
    pub transfer: Option<Destination>,
    /// `agent`: the agent context, with the client id as the extension.
    pub agent: Option<Destination>,
    pub amd: Option<Amd>,
}

#[derive(Debug, Clone)]
pub struct Amd {
    pub on_machine: OnMachine,
    pub destination: Destination,
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
    /// An answering machine got the whole reminder.
    pub message_left: bool,
    /// The callee went to the voice agent (keypad `agent`).
    pub to_agent: bool,
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
    // Its own function: what the originate needs (the request, Asterisk's
    // 400-byte answer, an error) is gone before `follow`, not kept in this
    // future for the call's life (BENCHMARKS.md "Cost per call: what
    // changed on 2026-12-03 (evening)").
    if let Err(end) = originate(ari, router, plan, &mut inbox).await {
        return end;
    }
    CallEnd::Ended(follow(ari, router, plan, inbox, started, abort, ari_state).await)
}

/// Sends the originate. `Err` is how the call ended when it was not
/// placed (its channel unregistered); `Ok` means follow it.
async fn originate(
    ari: &AriClient,
    router: &Arc<Router>,
    plan: &CallPlan,
    inbox: &mut Inbox,
) -> Result<(), CallEnd> {
    let request = Originate {
        endpoint: plan.endpoint.clone(),
        app: plan.app.clone(),
        channel_id: Some(plan.channel_id.clone()),
        caller_id: plan.caller_id.clone(),
        timeout_secs: Some(plan.ring_timeout_secs),
        ..Originate::default()
    };
    match ari.originate(&request).await {
        Ok(_) => Ok(()),
        // Our id is alive: a retried request that did get through. Follow it.
        Err(e) if e.status().map(|s| s.as_u16()) == Some(409) => Ok(()),
        Err(AriError::Status {
            status, message, ..
        }) => {
            router.unregister(&plan.channel_id);
            Err(CallEnd::Refused {
                status: status.as_u16(),
                message,
            })
        }
        Err(e) if e.never_reached_asterisk() => {
            router.unregister(&plan.channel_id);
            Err(CallEnd::NotPlaced {
                reason: e.to_string(),
            })
        }
        // No answer (timeout, connection lost mid-request): Asterisk may
        // have placed the call all the same. It was, if its events come or
        // the channel exists; it was not, if neither within a few seconds.
        Err(e) => {
            tracing::warn!(channel = %plan.channel_id, error = %e, "originate unanswered; checking whether Asterisk placed the call");
            if !placed(ari, &plan.channel_id, inbox).await {
                router.unregister(&plan.channel_id);
                return Err(CallEnd::NotPlaced {
                    reason: format!("{e}; no such channel and no event after {PLACEMENT_GRACE:?}"),
                });
            }
            tracing::info!(channel = %plan.channel_id, "the unanswered originate was placed: following the call");
            Ok(())
        }
    }
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
                let absent = match ari.channel_gone(channel_id).await {
                    Ok(false) => return true,
                    Ok(true) => true,
                    Err(_) => false,
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
    let mut talk = Talk::new(plan);
    let never = after(started, Duration::from_secs(86_400 * 365));
    let timeout_at = after(started, plan.call_timeout);
    if aborted {
        hangup(ari, &plan.channel_id, &mut hung_up_at).await;
    }

    loop {
        let call_timeout = (!timed_out && hung_up_at.is_none()).then_some(timeout_at);
        let hangup_checked = hung_up_at.map(|t| t + HANGUP_GRACE);
        let deadline = [
            finish_at,
            missing_sound,
            talk.menu_failed.as_ref().map(|f| f.0),
            talk.wait_until,
            call_timeout,
            hangup_checked,
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            env = inbox.recv() => {
                let Some(env) = env else { break };
                ev.observe(&env.event);
                talk.heard(&env.event);
                match &env.event {
                    Event::StasisStart { channel, args, .. } if channel.id == plan.channel_id => {
                        let back_from_amd = args.first().is_some_and(|a| a == "amd");
                        if plan.panic_on_answer && !back_from_amd {
                            panic!("test hook: call task panicked on answer of {}", plan.channel_id);
                        }
                        answered_after.get_or_insert(started.elapsed());
                        if hung_up_at.is_none() {
                            let step = if back_from_amd {
                                talk.verdict(args)
                            } else {
                                talk.script.answered()
                            };
                            talk.carry_out(step, ari, router, &mut ev, &mut inbox).await;
                        }
                    }
                    Event::ChannelDtmfReceived { channel, digit, .. }
                        if channel.id == plan.channel_id && hung_up_at.is_none() =>
                    {
                        let step = digit.chars().next().map_or(Step::Nothing, |d| talk.script.digit(d));
                        if step != Step::Nothing {
                            tracing::debug!(channel = %plan.channel_id, %digit, ?step, "key");
                            talk.cut(ari, &mut ev).await;
                            talk.carry_out(step, ari, router, &mut ev, &mut inbox).await;
                        }
                    }
                    Event::PlaybackFinished { playback } if ev.answered && talk.is_current(&playback.id) => {
                        let prompt = talk.current.take().map(|(_, p)| p);
                        if playback.state == "done" {
                            let step = talk.script.finished();
                            talk.carry_out(step, ari, router, &mut ev, &mut inbox).await;
                        } else if prompt == Some(ScriptPrompt::Reminder) {
                            if let Prompt::Failed { hangup_seen: false } = ev.prompt {
                                missing_sound = Some(Instant::now() + MISSING_SOUND_GRACE);
                                detail = Some(format!("prompt failed at {} (lang {}): sound missing on Asterisk?", playback.media_uri, plan.lang));
                            }
                        } else {
                            // Failed while the channel stays up: a missing sound
                            // (a hang-up fails the playback too, and then the
                            // channel goes within the grace).
                            talk.menu_failed = Some((Instant::now() + MISSING_SOUND_GRACE, playback.media_uri.clone()));
                        }
                    }
                    _ => {}
                }
                if talk.hang_up_now {
                    talk.hang_up_now = false;
                    hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                }
                if talk.left.is_some() {
                    break;
                }
                if ev.own_destroyed && (!local || ev.other_destroyed) {
                    break;
                }
                if ev.own_destroyed && finish_at.is_none() {
                    finish_at = Some(Instant::now() + OTHER_HALF_GRACE);
                }
            }
            // Every deadline of the call, one timer: the earliest armed one
            // (a timer each would put six in every call task's state and
            // re-arm them all on every event). Due ones act in this order.
            _ = sleep_until(deadline.unwrap_or(never)), if deadline.is_some() => {
                let now = Instant::now();
                let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
                if due(finish_at) {
                    break;
                } else if due(missing_sound) {
                    missing_sound = None;
                    if !ev.own_destroyed {
                        missing = true;
                        tracing::error!(channel = %plan.channel_id, media = ?plan.media, lang = %plan.lang,
                            "PROMPT NOT PLAYED: Asterisk could not play the configured sound; check campaign.media and the sound files");
                        hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                    }
                } else if due(talk.menu_failed.as_ref().map(|f| f.0)) {
                    if let Some((_, media)) = talk.menu_failed.take() {
                        if !ev.own_destroyed && ev.in_stasis {
                            // Say so loudly, and go on as if it had played (the keys still work).
                            tracing::error!(channel = %plan.channel_id, %media, lang = %plan.lang,
                                "MENU PROMPT NOT PLAYED: Asterisk could not play it; check menu.media / menu.opt_out_media and the sound files");
                            let step = talk.script.finished();
                            talk.carry_out(step, ari, router, &mut ev, &mut inbox).await;
                            if talk.hang_up_now {
                                talk.hang_up_now = false;
                                hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                            }
                        }
                    }
                } else if due(talk.wait_until) {
                    talk.wait_until = None;
                    if talk.script.wait_over() == Step::HangUp {
                        hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                    }
                } else if due(call_timeout) {
                    timed_out = true;
                    hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                } else if due(hangup_checked) {
                    // Asterisk said nothing after our DELETE (events lost while the
                    // socket was down?): ask directly.
                    if let Ok(true) = ari.channel_gone(&plan.channel_id).await {
                        break;
                    }
                    hung_up_at = None;
                    hangup(ari, &plan.channel_id, &mut hung_up_at).await;
                }
            }
            // Events sent while the socket was down are lost for good: after a
            // reconnect, ask Asterisk whether the channel is still there.
            changed = ari_state.changed() => {
                let reconnected = changed.is_ok() && ari_state.borrow_and_update().is_connected();
                if reconnected {
                    if let Ok(true) = ari.channel_gone(&plan.channel_id).await {
                        lost = true;
                        break;
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
        }
    }
    // A callee handed to the voice agent is followed by it now (its
    // StasisStart may have come before the continue's answer).
    if talk.left != Some(Action::Agent) {
        router.unregister(&plan.channel_id);
    }
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
    let heard = talk.heard_most();
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
    // What the callee chose, or a machine, says more than the events;
    // our own cut (shutdown, timeout) before that does not take it back.
    let (outcome, detail, message_left) = match talk.script.ending(talk.left) {
        Ending::Plain => (decided.outcome, decided.detail, false),
        // Our own hang-up after the menu: unless something else (a shutdown,
        // a timeout) cut the call first, the callee heard what there was.
        Ending::MenuDone if !aborted && !timed_out => (Outcome::Completed, None, false),
        Ending::MenuDone => (decided.outcome, decided.detail, false),
        Ending::Left(Action::Agent) => (Outcome::Transferred, Some("agent".to_owned()), false),
        Ending::Left(_) => (
            Outcome::Transferred,
            talk.interaction
                .transfer
                .as_ref()
                .map(|t| format!("to {t}")),
            false,
        ),
        Ending::OptedOut => (Outcome::OptedOut, None, false),
        Ending::Machine { message_left } => (
            Outcome::Voicemail,
            Some(
                if message_left {
                    "message left"
                } else {
                    "hung up on the machine"
                }
                .to_owned(),
            ),
            message_left,
        ),
    };
    let detail = match (detail, talk.amd_note.take()) {
        (Some(d), Some(a)) => Some(format!("{d}; {a}")),
        (d, a) => d.or(a),
    };
    Ended {
        outcome,
        cause: ev.cause(),
        trunk_congested: decided.trunk_congested,
        started,
        answered_after,
        lasted: started.elapsed(),
        detail,
        heard,
        message_left,
        to_agent: talk.left == Some(Action::Agent),
    }
}

/// The answered part of a call: the script (`rules::script`) carried out
/// on the channel, and what the callee heard of the reminder.
struct Talk<'a> {
    plan: &'a CallPlan,
    interaction: &'a Interaction,
    script: Script,
    /// The playback running now, by our own id, and which prompt it is.
    current: Option<(String, ScriptPrompt)>,
    playbacks: u32,
    /// When the reminder playing now started (the id is `current`'s).
    reminder_from: Option<Instant>,
    /// The longest stretch of the reminder heard in one go.
    heard: Option<Duration>,
    /// Waiting for a key after the options, until then.
    wait_until: Option<Instant>,
    /// A menu prompt failed: a missing sound if the channel is still up then.
    menu_failed: Option<(Instant, String)>,
    amd_from: Option<Instant>,
    amd_note: Option<String>,
    /// The channel went on to the dialplan by a key: the call is no longer ours.
    left: Option<Action>,
    hang_up_now: bool,
}

impl<'a> Talk<'a> {
    fn new(plan: &'a CallPlan) -> Talk<'a> {
        let i = &plan.interaction;
        Talk {
            plan,
            interaction: i,
            script: Script::new(i.keys.clone(), i.amd.as_ref().map(|a| a.on_machine)),
            current: None,
            playbacks: 0,
            reminder_from: None,
            heard: None,
            wait_until: None,
            menu_failed: None,
            amd_from: None,
            amd_note: None,
            left: None,
            hang_up_now: false,
        }
    }

    fn is_current(&self, playback_id: &str) -> bool {
        self.current
            .as_ref()
            .is_some_and(|(id, _)| id == playback_id)
    }

    /// How much of the reminder was heard: from the start of a reminder
    /// playback to its end, or to the call's end or a key that cut it
    /// (all within ms of each other when the callee hangs up).
    fn heard(&mut self, event: &Event) {
        match event {
            Event::PlaybackStarted { playback }
                if self
                    .current
                    .as_ref()
                    .is_some_and(|(id, p)| *p == ScriptPrompt::Reminder && *id == playback.id) =>
            {
                self.reminder_from.get_or_insert_with(Instant::now);
            }
            Event::PlaybackFinished { playback } if self.is_current(&playback.id) => {
                self.reminder_ended()
            }
            Event::StasisEnd { .. } | Event::ChannelDestroyed { .. } => self.reminder_ended(),
            _ => {}
        }
    }

    fn reminder_ended(&mut self) {
        if let Some(from) = self.reminder_from.take() {
            let d = from.elapsed();
            self.heard = Some(self.heard.map_or(d, |h| h.max(d)));
        }
    }

    fn heard_most(&mut self) -> Option<Duration> {
        self.reminder_ended();
        self.heard
    }

    /// `AMD()`'s verdict from the returning `StasisStart`'s args
    /// (`["amd", STATUS, CAUSE]`, LAB.md fact 17).
    fn verdict(&mut self, args: &[String]) -> Step {
        let status = args.get(1).map_or("", String::as_str);
        let cause = args.get(2).map_or("", String::as_str);
        let took = self.amd_from.map(|t| t.elapsed().as_secs_f64());
        self.amd_note = Some(match took {
            Some(s) => format!("AMD {status} ({cause}) in {s:.1} s"),
            None => format!("AMD {status} ({cause})"),
        });
        self.script.verdict(status)
    }

    /// Stops what is playing, at once: a key cuts any prompt (its
    /// `PlaybackFinished` will say `done`, LAB.md fact 15, and is ignored).
    async fn cut(&mut self, ari: &AriClient, ev: &mut Evidence) {
        self.wait_until = None;
        self.menu_failed = None;
        if let Some((id, prompt)) = self.current.take() {
            if prompt == ScriptPrompt::Reminder {
                self.reminder_ended();
                ev.counted = Counted::Nothing;
            }
            if let Err(e) = ari.stop_playback(&id).await {
                if !e.is_not_found() {
                    tracing::warn!(channel = %self.plan.channel_id, playback = %id, error = %e, "cannot stop the prompt");
                }
            }
        }
    }

    async fn carry_out(
        &mut self,
        step: Step,
        ari: &AriClient,
        router: &Arc<Router>,
        ev: &mut Evidence,
        inbox: &mut Inbox,
    ) {
        let plan = self.plan;
        let i = self.interaction;
        match step {
            Step::Nothing => {}
            Step::HangUp => self.hang_up_now = true,
            Step::WaitForDigit => self.wait_until = Some(after(Instant::now(), i.wait)),
            Step::DetectMachine => {
                let Some(amd) = &i.amd else { return };
                self.amd_from = Some(Instant::now());
                if let Err(e) = ari.continue_to(&plan.channel_id, &amd.destination).await {
                    if !e.is_not_found() {
                        // No verdict will come: play the reminder as if it were a person.
                        tracing::error!(channel = %plan.channel_id, error = %e, "cannot send the call to AMD(); playing the reminder");
                        let step = self.script.verdict("NOTSURE");
                        Box::pin(self.carry_out(step, ari, router, ev, inbox)).await;
                    }
                }
            }
            Step::Play(prompt) => {
                let media = match prompt {
                    ScriptPrompt::Reminder => &plan.media,
                    ScriptPrompt::Options => &i.options,
                    ScriptPrompt::OptOutConfirmation => &i.opt_out_confirmation,
                };
                self.playbacks += 1;
                let id = format!("{}-play{}", plan.channel_id, self.playbacks);
                if prompt == ScriptPrompt::Reminder {
                    ev.counted = Counted::Only(id.clone());
                }
                self.current = Some((id.clone(), prompt));
                if let Err(e) = ari
                    .play(&plan.channel_id, media, Some(&plan.lang), Some(&id))
                    .await
                {
                    self.current = None;
                    if !e.is_not_found() {
                        tracing::error!(channel = %plan.channel_id, error = %e, ?prompt, "cannot play; hanging up");
                        self.hang_up_now = true;
                    }
                }
            }
            Step::OptOut => {
                let step = Step::Play(ScriptPrompt::OptOutConfirmation);
                Box::pin(self.carry_out(step, ari, router, ev, inbox)).await;
            }
            Step::Transfer | Step::Agent => {
                let (action, to) = if step == Step::Agent {
                    (Action::Agent, i.agent.as_ref())
                } else {
                    (Action::Transfer, i.transfer.as_ref())
                };
                let Some(to) = to else {
                    let step = self.script.left_failed();
                    return Box::pin(self.carry_out(step, ari, router, ev, inbox)).await;
                };
                // The agent app's StasisStart for this channel must reach the
                // voice agent, not this call: stop following it first.
                if action == Action::Agent {
                    router.unregister(&plan.channel_id);
                }
                match ari.continue_to(&plan.channel_id, to).await {
                    Ok(()) => self.left = Some(action),
                    Err(e) => {
                        if action == Action::Agent {
                            if let Some(again) = router.try_register(&plan.channel_id, None) {
                                *inbox = again;
                            }
                        }
                        if !e.is_not_found() {
                            tracing::error!(channel = %plan.channel_id, error = %e, %to, "cannot send the callee on; hanging up");
                        }
                        let step = self.script.left_failed();
                        Box::pin(self.carry_out(step, ari, router, ev, inbox)).await;
                    }
                }
            }
        }
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
