//! One originated call, played out as the lab's Asterisk did: the event
//! sequences below are transcribed from `shared/ari/events.jsonl`, one
//! function per recorded situation, so each can be checked against it.
//!
//! `a` is the channel the originate returned (`;1` of a Local pair, or the
//! only channel of a direct trunk call); `b` is the Local `;2` half.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::dialplan::{Callee, Route};
use super::state::{new_channel, Ctl, Emit};
use super::Shared;
use crate::ari::model::{CallerId, Channel, DialplanCep};

pub struct Call {
    pub a: String,
    pub b: Option<String>,
    pub app: String,
    pub route: Route,
    pub callee: Callee,
    /// Asterisk's originate timeout, already scaled.
    pub ring_timeout: Duration,
    pub ctl: mpsc::UnboundedReceiver<Ctl>,
}

/// How an answered call is torn down, per route.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Pstn,
    FromVoip,
    Direct,
}

/// The way the ringing phase ended.
enum Rang {
    Answered,
    TimedOut,
    Cancelled(i64),
    /// `core stop now` while ringing.
    Shutdown,
    Gone,
}

pub async fn run(sim: Arc<Shared>, mut call: Call) {
    match call.route.clone() {
        Route::LocalPstn { number } => pstn(&sim, &mut call, &number).await,
        Route::LocalFromVoip { number } => from_voip(&sim, &mut call, &number).await,
        Route::Direct {
            number, dialstring, ..
        } => direct(&sim, &mut call, &number, &dialstring).await,
        Route::LocalAgent => agent(&sim, &mut call).await,
        Route::LocalUnknownContext { .. } => {
            let b = call.b.clone().unwrap_or_default();
            sim.with(|e| {
                e.destroyed(&b, 0);
                e.destroyed(&call.a, 0);
            });
        }
        Route::Unavailable => {}
    }
}

/// Waits while the callee's phone rings: for the answer, Asterisk's ring
/// timeout, or our DELETE.
async fn ring(sim: &Shared, call: &mut Call, answer_after: Option<Duration>) -> Rang {
    let start = Instant::now();
    let timeout_at = start + call.ring_timeout;
    let answer_at = answer_after.map(|d| start + sim.scaled(d));
    loop {
        let next = match answer_at {
            Some(at) if at < timeout_at => at,
            _ => timeout_at,
        };
        tokio::select! {
            _ = sleep_until(next) => {
                return if Some(next) == answer_at { Rang::Answered } else { Rang::TimedOut };
            }
            cmd = call.ctl.recv() => match cmd {
                None => return Rang::Gone,
                Some(Ctl::Hangup { cause, .. }) => return Rang::Cancelled(cause),
                Some(Ctl::Shutdown) => return Rang::Shutdown,
                Some(Ctl::Play { ack, .. }) => drop(ack), // not in Stasis: REST answered 412
            }
        }
    }
}

/// Our DELETE before the answer.
fn cancel(e: &mut Emit, a: &str, b: Option<&str>, dialstring: &str, cause: i64) {
    e.hangup_request(a, 32, true);
    e.dial(a, "CANCEL", dialstring);
    e.destroyed(a, cause);
    if let Some(b) = b {
        e.hangup_request(b, 16, true);
        e.destroyed(b, cause);
    }
}

/// `Local/<n>@sim-pstn`: recordings `answer`, `busy`, `noanswer`,
/// `congestion`, `unallocated`, `short`, `channelid` (second call).
async fn pstn(sim: &Shared, call: &mut Call, number: &str) {
    let (a, b) = (call.a.clone(), call.b.clone().unwrap_or_default());
    let ds = format!("{number}@sim-pstn");
    let d = Callee::digit(number);
    sim.with(|e| {
        e.dial(&a, "", &ds);
        e.dialplan(
            &b,
            "NoOp",
            &format!("sim-pstn callee {number} (last digit {d})"),
        );
        e.dialplan(&b, "Goto", &format!("d{d}"));
    });
    match call.callee {
        Callee::Answers { hangs_up_after } => {
            if ('0'..='3').contains(&d) {
                sim.with(|e| e.dialplan(&b, "Goto", "up20"));
            }
            let delay = sim.answer_delay(number);
            if !delay.is_zero() {
                sim.with(|e| {
                    e.dialplan(&b, "Ringing", "");
                    e.state(&a, "Ringing");
                    e.dial(&a, "RINGING", &ds);
                });
                match ring(sim, call, Some(delay)).await {
                    Rang::Answered => {}
                    Rang::TimedOut => return sim.with(|e| pstn_ring_timeout(e, &a, &b)),
                    Rang::Cancelled(cause) => {
                        return sim.with(|e| cancel(e, &a, Some(&b), &ds, cause))
                    }
                    Rang::Shutdown => return sim.with(|e| shutdown_now(e, &a, Some(&b), None)),
                    Rang::Gone => return,
                }
            }
            let in_stasis = sim.with(|e| {
                e.dialplan(&b, "Answer", "");
                e.state(&b, "Up");
                e.state(&a, "Up");
                e.dial(&a, "ANSWER", &ds);
                e.varset(&a, "STASISSTATUS", "");
                e.stasis_start(&a, &call.app, &[])
            });
            if !in_stasis {
                return sim.with(|e| stasis_failed(e, &a, Some(&b)));
            }
            let wait = match d {
                '7' => "2",
                '8' => "300",
                _ => "20",
            };
            answered(sim, call, Style::Pstn, hangs_up_after, Some(wait)).await;
        }
        Callee::Busy | Callee::Congestion => {
            let (app, data, status, cause) = if call.callee == Callee::Busy {
                ("Busy", "10", "BUSY", 17)
            } else {
                ("Congestion", "5", "CONGESTION", 34)
            };
            sim.with(|e| {
                e.dialplan(&b, app, data);
                e.state(&b, "Busy");
                e.dial(&a, status, &ds);
                e.hangup_request(&b, 0, false);
                e.destroyed(&a, 0);
                e.hangup_request(&b, 16, true);
                e.destroyed(&b, cause);
            });
        }
        Callee::Unallocated | Callee::Rejects => {
            let cause = if call.callee == Callee::Rejects {
                21
            } else {
                1
            };
            sim.with(|e| {
                e.dialplan(&b, "Hangup", &cause.to_string());
                e.hangup_request(&b, 16, true);
                e.hangup_request(&a, cause, false);
                e.destroyed(&b, cause);
                e.dial(&a, "NOANSWER", &ds);
                e.destroyed(&a, cause);
            });
        }
        Callee::NeverAnswers => {
            sim.with(|e| {
                e.dialplan(&b, "Ringing", "");
                e.state(&a, "Ringing");
                e.dialplan(&b, "Wait", "120");
                e.dial(&a, "RINGING", &ds);
            });
            match ring(sim, call, None).await {
                Rang::TimedOut | Rang::Answered => sim.with(|e| pstn_ring_timeout(e, &a, &b)),
                Rang::Cancelled(cause) => sim.with(|e| cancel(e, &a, Some(&b), &ds, cause)),
                Rang::Shutdown => sim.with(|e| shutdown_now(e, &a, Some(&b), None)),
                Rang::Gone => {}
            }
        }
    }
}

/// Asterisk's ring timeout on a Local pair: cause 19, no final `Dial`.
fn pstn_ring_timeout(e: &mut Emit, a: &str, b: &str) {
    e.hangup_request(b, 19, false);
    e.destroyed(a, 19);
    e.hangup_request(b, 16, true);
    e.destroyed(b, 19);
}

/// The answered call's app is not registered: `Stasis()` fails and the
/// dialplan hangs up. Nobody receives these events.
fn stasis_failed(e: &mut Emit, a: &str, b: Option<&str>) {
    e.varset(a, "STASISSTATUS", "FAILED");
    e.destroyed(a, 16);
    if let Some(b) = b {
        e.destroyed(b, 16);
    }
}

/// The `from-voip` context: `;2` runs `Dial(Local/<n>@sim-pstn)`.
/// Recordings `dialplan`, `fv-busy`, `fv-noanswer`, `fv-congestion`,
/// `fv-unallocated`, `fv-short`, `channelid` (first call).
async fn from_voip(sim: &Shared, call: &mut Call, number: &str) {
    let (a, b) = (call.a.clone(), call.b.clone().unwrap_or_default());
    let ds = format!("{number}@from-voip");
    let inner_ds = format!("{number}@sim-pstn");
    let mut inner = sim.with(|e| {
        let seq = e.inner.next_seq();
        let id = e.inner.next_id();
        new_channel(
            id,
            format!("Local/{number}@sim-pstn-{seq:08x};1"),
            "Down",
            DialplanCep {
                context: "sim-pstn".into(),
                exten: number.into(),
                priority: 1,
                app_name: "AppDial".into(),
                app_data: "(Outgoing Line)".into(),
            },
            CallerId::default(),
        )
    });
    sim.with(|e| {
        e.dial(&a, "", &ds);
        e.dialplan(&b, "NoOp", &format!("out {number}"));
        e.dialplan(&b, "Dial", &format!("Local/{number}@sim-pstn"));
        for var in DIAL_VARS {
            e.varset(&b, var, "");
        }
        e.dial_from(&b, &inner, "", &inner_ds);
    });
    let fail =
        |e: &mut Emit, inner: &Channel, inner_status: &str, dialstatus: &str, a_cause: i64| {
            e.dial_from(&b, inner, inner_status, "");
            e.varset(&b, "DIALSTATUS", dialstatus);
            e.dialplan(&b, "Hangup", "");
            e.hangup_request(&b, 16, true);
            e.varset(&a, "CHANLOCALSTATUS", dialstatus);
            e.hangup_request(&a, a_cause, false);
            e.dial(&a, "NOANSWER", &ds);
            e.destroyed(&a, a_cause);
            e.destroyed(&b, a_cause);
        };
    match call.callee {
        Callee::Busy => sim.with(|e| fail(e, &inner, "BUSY", "BUSY", 16)),
        Callee::Congestion => sim.with(|e| fail(e, &inner, "CONGESTION", "CONGESTION", 16)),
        Callee::Unallocated => sim.with(|e| fail(e, &inner, "NOANSWER", "CHANUNAVAIL", 1)),
        Callee::Rejects => sim.with(|e| fail(e, &inner, "NOANSWER", "CHANUNAVAIL", 21)),
        Callee::NeverAnswers | Callee::Answers { .. } => {
            let delay = sim.answer_delay(number);
            let rings = call.callee == Callee::NeverAnswers || !delay.is_zero();
            if rings {
                inner.state = "Ringing".into();
                sim.with(|e| {
                    e.state(&a, "Ringing");
                    e.varset(&b, "RINGTIME", "0");
                    e.varset(&b, "RINGTIME_MS", "1");
                    e.dial(&a, "RINGING", &ds);
                    e.dial_from(&b, &inner, "RINGING", "");
                });
                let answer = if call.callee.answers() {
                    Some(delay)
                } else {
                    None
                };
                match ring(sim, call, answer).await {
                    Rang::Answered => {}
                    Rang::TimedOut => {
                        return sim.with(|e| {
                            e.hangup_request(&b, 19, false);
                            e.destroyed(&a, 19);
                            e.dial_from(&b, &inner, "CANCEL", "");
                            e.varset(&b, "DIALSTATUS", "CANCEL");
                            e.hangup_request(&b, 16, true);
                            e.destroyed(&b, 19);
                        })
                    }
                    Rang::Cancelled(cause) => {
                        return sim.with(|e| cancel(e, &a, Some(&b), &ds, cause))
                    }
                    Rang::Shutdown => return sim.with(|e| shutdown_now(e, &a, Some(&b), None)),
                    Rang::Gone => return,
                }
            }
            let Callee::Answers { hangs_up_after } = call.callee else {
                return;
            };
            inner.state = "Up".into();
            let in_stasis = sim.with(|e| {
                e.varset(&b, "DIALSTATUS", "ANSWER");
                e.varset(&b, "DIALEDPEERNAME", &inner.name);
                e.varset(&b, "DIALEDPEERNUMBER", &inner_ds);
                e.dial_from(&b, &inner, "ANSWER", "");
                e.state(&b, "Up");
                e.state(&a, "Up");
                e.dial(&a, "ANSWER", &ds);
                e.varset(&b, "BRIDGEPEER", &inner.name);
                e.varset(&a, "STASISSTATUS", "");
                e.stasis_start(&a, &call.app, &[])
            });
            if !in_stasis {
                return sim.with(|e| stasis_failed(e, &a, Some(&b)));
            }
            answered(sim, call, Style::FromVoip, hangs_up_after, None).await;
        }
    }
}

/// Variables `Dial()` clears on its channel before dialling.
const DIAL_VARS: [&str; 11] = [
    "DIALSTATUS",
    "DIALEDPEERNUMBER",
    "DIALEDPEERNAME",
    "ANSWEREDTIME",
    "ANSWEREDTIME_MS",
    "DIALEDTIME",
    "DIALEDTIME_MS",
    "RINGTIME",
    "RINGTIME_MS",
    "PROGRESSTIME",
    "PROGRESSTIME_MS",
];

/// A direct trunk endpoint (`PJSIP/…`, `SIP/…`): one channel, whose own
/// cause is the Q.850 cause. Not in the recordings (the lab had no trunk);
/// modelled on the same event types with the cause on the channel.
async fn direct(sim: &Shared, call: &mut Call, number: &str, ds: &str) {
    let a = call.a.clone();
    sim.with(|e| e.dial(&a, "", ds));
    let fail = |e: &mut Emit, status: &str, cause: i64| {
        e.dial(&a, status, ds);
        e.hangup_request(&a, cause, false);
        e.destroyed(&a, cause);
    };
    match call.callee {
        Callee::Busy => sim.with(|e| fail(e, "BUSY", 17)),
        Callee::Congestion => sim.with(|e| fail(e, "CONGESTION", 34)),
        Callee::Unallocated => sim.with(|e| fail(e, "CHANUNAVAIL", 1)),
        Callee::Rejects => sim.with(|e| fail(e, "CHANUNAVAIL", 21)),
        Callee::NeverAnswers | Callee::Answers { .. } => {
            let delay = sim.answer_delay(number);
            if call.callee == Callee::NeverAnswers || !delay.is_zero() {
                sim.with(|e| {
                    e.state(&a, "Ringing");
                    e.dial(&a, "RINGING", ds);
                });
                let answer = if call.callee.answers() {
                    Some(delay)
                } else {
                    None
                };
                match ring(sim, call, answer).await {
                    Rang::Answered => {}
                    // Asterisk's ring timeout: cause 19 and no final Dial event.
                    Rang::TimedOut => return sim.with(|e| e.destroyed(&a, 19)),
                    Rang::Cancelled(cause) => return sim.with(|e| cancel(e, &a, None, ds, cause)),
                    Rang::Shutdown => return sim.with(|e| shutdown_now(e, &a, None, None)),
                    Rang::Gone => return,
                }
            }
            let Callee::Answers { hangs_up_after } = call.callee else {
                return;
            };
            let in_stasis = sim.with(|e| {
                e.state(&a, "Up");
                e.dial(&a, "ANSWER", ds);
                e.varset(&a, "STASISSTATUS", "");
                e.stasis_start(&a, &call.app, &[])
            });
            if !in_stasis {
                return sim.with(|e| stasis_failed(e, &a, None));
            }
            answered(sim, call, Style::Direct, hangs_up_after, None).await;
        }
    }
}

/// `Local/3241000752@from-voip`: `;2` answers and runs `Stasis(openai-app)`
/// (recording `inbound`). Ends when either half is deleted.
async fn agent(sim: &Shared, call: &mut Call) {
    let (a, b) = (call.a.clone(), call.b.clone().unwrap_or_default());
    let ds = format!("{}@from-voip", super::dialplan::AGENT_NUMBER);
    let inbound_app = sim.inbound_app();
    let a_in = sim.with(|e| {
        e.caller_id(&b);
        e.connected_line(&b);
        e.dial(&a, "", &ds);
        e.dialplan(&b, "Answer", "");
        e.state(&b, "Up");
        e.state(&a, "Up");
        e.dial(&a, "ANSWER", &ds);
        e.varset(&a, "STASISSTATUS", "");
        e.stasis_start(&a, &call.app, &[])
    });
    if !a_in {
        return sim.with(|e| stasis_failed(e, &a, Some(&b)));
    }
    // Answer() and the codec settings take the lab's Asterisk about 500 ms.
    let enter_at = Instant::now() + sim.scaled(Duration::from_millis(500));
    let mut entered = false;
    loop {
        tokio::select! {
            _ = sleep_until(enter_at), if !entered => {
                entered = true;
                sim.with(|e| {
                    e.stasis_start(&b, &inbound_app, &[]);
                    // The lab's openai-app did not get these two: it follows ;2 only after them.
                    e.dialplan(&b, "Stasis", &inbound_app);
                    e.varset(&b, "STASISSTATUS", "");
                    e.subscribe(&b, &inbound_app);
                });
            }
            cmd = call.ctl.recv() => match cmd {
                None => return,
                Some(Ctl::Play { ack, .. }) => drop(ack),
                Some(Ctl::Shutdown) => return sim.with(|e| shutdown_now(e, &a, Some(&b), None)),
                Some(Ctl::Hangup { .. }) => {
                    return sim.with(|e| {
                        let agent_app = e.inner.channels.get(&b).and_then(|c| c.stasis.clone());
                        e.hangup_request(&b, 32, true);
                        e.stasis_end(&b, true);
                        if agent_app.is_some() {
                            e.varset(&b, "STASISSTATUS", "SUCCESS");
                        }
                        e.hangup_request(&b, 16, true);
                        e.hangup_request(&a, 16, false);
                        e.destroyed(&b, 16);
                        e.stasis_end(&a, false);
                        e.varset(&a, "STASISSTATUS", "SUCCESS");
                        e.destroyed(&a, 16);
                    });
                }
            }
        }
    }
}

/// A playback in progress on the call's channel.
struct Playing {
    id: String,
    media: Vec<String>,
    index: usize,
    lang: String,
    /// When the current media item ends, and whether it could be played.
    until: Instant,
    ok: bool,
}

impl Playing {
    fn json(&self, a: &str, state: &str) -> serde_json::Value {
        let mut v = json!({
            "id": self.id,
            "media_uri": self.media.get(self.index).cloned().unwrap_or_default(),
            "target_uri": format!("channel:{a}"),
            "language": self.lang,
            "state": state,
        });
        if let Some(next) = self.media.get(self.index + 1) {
            v["next_media_uri"] = json!(next);
        }
        v
    }
}

/// The answered call in Stasis: prompts, the callee's own hang-up, our DELETE.
async fn answered(
    sim: &Shared,
    call: &mut Call,
    style: Style,
    hangs_up_after: Duration,
    wait: Option<&str>,
) {
    let a = call.a.clone();
    let b = call.b.clone();
    let answered_at = Instant::now();
    let callee_hangs_up = answered_at + sim.scaled(hangs_up_after);
    // The callee's `Wait()` shows a few ms after the answer (4–12 ms in the lab).
    let mut wait_event = wait.map(|w| (answered_at + sim.dialplan_lag(), w.to_owned()));
    let mut queue: VecDeque<(String, Vec<String>, String)> = VecDeque::new();
    let mut playing: Option<Playing> = None;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let play_until = playing.as_ref().map_or(far, |p| p.until);
        let wait_at = wait_event.as_ref().map_or(far, |(t, _)| *t);
        tokio::select! {
            _ = sleep_until(wait_at), if wait_event.is_some() => {
                if let (Some((_, w)), Some(b)) = (wait_event.take(), &b) {
                    sim.with(|e| e.dialplan(b, "Wait", &w));
                }
            }
            _ = sleep_until(play_until), if playing.is_some() => {
                playing = advance(sim, &a, playing.take(), &mut queue);
            }
            _ = sleep_until(callee_hangs_up) => {
                let billed = answered_at.elapsed();
                return sim.with(|e| callee_hangup(e, style, &a, b.as_deref(), playing.as_ref(), billed));
            }
            cmd = call.ctl.recv() => match cmd {
                None => return,
                Some(Ctl::Play { playback_id, media, lang, ack }) => {
                    queue.push_back((playback_id, media, lang));
                    if playing.is_none() {
                        playing = start_next(sim, &a, &mut queue);
                    }
                    let _ = ack.send(());
                }
                Some(Ctl::Hangup { .. }) => {
                    let billed = answered_at.elapsed();
                    return sim.with(|e| our_hangup(e, style, &a, b.as_deref(), playing.as_ref(), billed));
                }
                Some(Ctl::Shutdown) => {
                    return sim.with(|e| shutdown_now(e, &a, b.as_deref(), playing.as_ref()));
                }
            }
        }
    }
}

fn start_next(
    sim: &Shared,
    a: &str,
    queue: &mut VecDeque<(String, Vec<String>, String)>,
) -> Option<Playing> {
    let (id, media, lang) = queue.pop_front()?;
    let mut p = Playing {
        id,
        media,
        index: 0,
        lang,
        until: Instant::now(),
        ok: false,
    };
    (p.ok, p.until) = sim.media_length(&p.media[0], &p.lang);
    sim.with(|e| e.playback(a, "PlaybackStarted", p.json(a, "playing")));
    Some(p)
}

/// The current media item ended: on to the next item, the next queued
/// playback, or done. A sound that is missing fails the whole playback.
fn advance(
    sim: &Shared,
    a: &str,
    playing: Option<Playing>,
    queue: &mut VecDeque<(String, Vec<String>, String)>,
) -> Option<Playing> {
    let mut p = playing?;
    if !p.ok {
        sim.with(|e| e.playback(a, "PlaybackFinished", p.json(a, "failed")));
        return start_next(sim, a, queue);
    }
    if p.index + 1 < p.media.len() {
        p.index += 1;
        (p.ok, p.until) = sim.media_length(&p.media[p.index], &p.lang);
        sim.with(|e| e.playback(a, "PlaybackContinuing", p.json(a, "continuing")));
        return Some(p);
    }
    sim.with(|e| e.playback(a, "PlaybackFinished", p.json(a, "done")));
    start_next(sim, a, queue)
}

/// Time-related variables `Dial()` sets on `;2` when its call ends.
fn dial_times(e: &mut Emit, b: &str, billed: Duration) {
    e.varset(b, "BRIDGEPEER", "");
    e.varset(b, "ANSWEREDTIME", &billed.as_secs().to_string());
    e.varset(b, "ANSWEREDTIME_MS", &billed.as_millis().to_string());
    e.varset(b, "DIALEDTIME", &billed.as_secs().to_string());
    e.varset(b, "DIALEDTIME_MS", &(billed.as_millis() + 2).to_string());
    e.varset(b, "DIALSTATUS", "ANSWER");
}

fn playback_interrupted(e: &mut Emit, a: &str, playing: Option<&Playing>) {
    if let Some(p) = playing {
        e.playback(a, "PlaybackFinished", p.json(a, "failed"));
    }
}

/// Our `DELETE` of the answered channel (recordings `answer`, `dialplan`).
fn our_hangup(
    e: &mut Emit,
    style: Style,
    a: &str,
    b: Option<&str>,
    playing: Option<&Playing>,
    billed: Duration,
) {
    e.hangup_request(a, 32, true);
    playback_interrupted(e, a, playing);
    e.leave_bridges(a);
    e.stasis_end(a, false);
    e.varset(a, "STASISSTATUS", "SUCCESS");
    match (style, b) {
        (Style::Pstn, Some(b)) => {
            e.hangup_request(b, 16, false);
            e.hangup_request(b, 16, true);
            e.destroyed(a, 16);
            e.destroyed(b, 16);
        }
        (Style::FromVoip, Some(b)) => {
            e.hangup_request(b, 16, false);
            e.destroyed(a, 16);
            dial_times(e, b, billed);
            e.hangup_request(b, 16, true);
            e.destroyed(b, 16);
        }
        _ => e.destroyed(a, 16),
    }
}

/// The callee hangs up (recordings `short`, `fv-short`).
fn callee_hangup(
    e: &mut Emit,
    style: Style,
    a: &str,
    b: Option<&str>,
    playing: Option<&Playing>,
    billed: Duration,
) {
    match (style, b) {
        (Style::Pstn, Some(b)) => {
            e.dialplan(b, "Hangup", "");
            e.hangup_request(b, 16, true);
            e.hangup_request(a, 16, false);
            playback_interrupted(e, a, playing);
            e.leave_bridges(a);
            e.stasis_end(a, false);
            e.varset(a, "STASISSTATUS", "SUCCESS");
            e.destroyed(a, 16);
            e.destroyed(b, 16);
        }
        (Style::FromVoip, Some(b)) => {
            dial_times(e, b, billed);
            e.hangup_request(b, 16, true);
            e.varset(a, "CHANLOCALSTATUS", "ANSWER");
            e.hangup_request(a, 16, false);
            e.destroyed(b, 16);
            playback_interrupted(e, a, playing);
            e.leave_bridges(a);
            e.stasis_end(a, false);
            e.varset(a, "STASISSTATUS", "SUCCESS");
            e.destroyed(a, 16);
        }
        _ => {
            e.hangup_request(a, 16, false);
            playback_interrupted(e, a, playing);
            e.leave_bridges(a);
            e.stasis_end(a, false);
            e.varset(a, "STASISSTATUS", "SUCCESS");
            e.destroyed(a, 16);
        }
    }
}

/// `core stop now` (recording `shutdown-mid-prompt`, fact 13): every
/// channel gets the shutdown soft hangup (cause 4), and every channel dies
/// with cause 0 whatever the callee did, so the cause tells nothing.
/// Recorded for an answered `sim-pstn` pair only; other routes and states
/// follow the same pattern (no final `Dial`, no `;2` dialplan events).
fn shutdown_now(e: &mut Emit, a: &str, b: Option<&str>, playing: Option<&Playing>) {
    if let Some(b) = b {
        e.hangup_request(b, 4, true);
    }
    e.hangup_request(a, 4, true);
    if let Some(b) = b {
        // chan_local passes each half's hangup on to the other half.
        e.hangup_request(b, 16, true);
        e.hangup_request(a, 0, false);
        // Only a `;2` that entered Stasis from the dialplan (the agent's) is in one.
        leave_stasis(e, b, true);
        e.destroyed(b, 0);
    }
    playback_interrupted(e, a, playing);
    leave_stasis(e, a, false);
    e.destroyed(a, 0);
}

/// `core stop now` for a channel no call task plays (externalMedia, an
/// inbound trunk call): the same pattern as `shutdown_now`.
pub fn shutdown_lone(e: &mut Emit, id: &str) {
    let via_dialplan = e.inner.channels.get(id).is_some_and(|c| c.via_dialplan);
    e.hangup_request(id, 4, true);
    leave_stasis(e, id, via_dialplan);
    e.destroyed(id, 0);
}

/// A hung-up channel leaves its bridges and Stasis; `STASISSTATUS` is set
/// as the Stasis() application returns.
fn leave_stasis(e: &mut Emit, id: &str, unsubscribe: bool) {
    if e.inner.channels.get(id).is_some_and(|c| c.stasis.is_some()) {
        e.leave_bridges(id);
        e.stasis_end(id, unsubscribe);
        e.varset(id, "STASISSTATUS", "SUCCESS");
    }
}
