//! One call, played out as the lab's Asterisk did: the event sequences
//! below are transcribed from `tests/fixtures/ari/events.jsonl`, one function per
//! recorded situation, so each can be checked against it. An originated
//! call runs `run`; an inbound one, `inbound`. Playbacks on any channel in
//! Stasis go through a `Player`.
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
use super::state::{new_channel, Ctl, Emit, Inner};
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
        Route::LocalPstnDtmf { number } => pstn_dtmf(&sim, &mut call, &number).await,
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
                Some(Ctl::StopPlayback { ack, .. }) => drop(ack.send(false)),
                // Only an answered call has a far end that can hang up.
                Some(Ctl::FarEndHangup) => {}
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
                    Rang::Shutdown => {
                        return sim.with(|e| shutdown_now(e, &a, Some(&b), None, None))
                    }
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
            let script = callee_script(sim, hangs_up_after, Some(wait));
            answered(sim, call, Style::Pstn, script).await;
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
                Rang::Shutdown => sim.with(|e| shutdown_now(e, &a, Some(&b), None, None)),
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

/// `Local/<n>@sim-pstn-dtmf` (recording `callee-dtmf`): the callee
/// answers, `Wait(2)`, presses 1 (`SendDTMF(1)`, reported on `;1` as the
/// digit ends), `Wait(10)`, `Hangup()`.
async fn pstn_dtmf(sim: &Shared, call: &mut Call, number: &str) {
    let (a, b) = (call.a.clone(), call.b.clone().unwrap_or_default());
    let ds = format!("{number}@sim-pstn-dtmf");
    let in_stasis = sim.with(|e| {
        e.dial(&a, "", &ds);
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
    let waits = Instant::now() + sim.dialplan_lag();
    let sends = waits + sim.scaled(Duration::from_secs(2));
    // `SendDTMF()` returned 0.45 s after it started, the digit and its gap.
    let sent = sends + sim.scaled(Duration::from_millis(452));
    let script = VecDeque::from([
        (waits, CalleeStep::App("Wait", "2".into())),
        (sends, CalleeStep::App("SendDTMF", "1".into())),
        (sends + sim.scaled(DTMF_LENGTH), CalleeStep::Dtmf('1')),
        (sent, CalleeStep::App("Wait", "10".into())),
        (
            sent + sim.scaled(Duration::from_secs(10)),
            CalleeStep::HangUp,
        ),
    ]);
    answered(sim, call, Style::Pstn, script).await;
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
                    Rang::Shutdown => {
                        return sim.with(|e| shutdown_now(e, &a, Some(&b), None, None))
                    }
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
            let script = callee_script(sim, hangs_up_after, None);
            answered(sim, call, Style::FromVoip, script).await;
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
                    Rang::Shutdown => return sim.with(|e| shutdown_now(e, &a, None, None, None)),
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
            let script = callee_script(sim, hangs_up_after, None);
            answered(sim, call, Style::Direct, script).await;
        }
    }
}

/// `Local/3241000752@from-voip`: `;2` answers and runs `Stasis(openai-app)`
/// (recording `inbound`). Either half in Stasis can play. Ends when either
/// half is deleted (`;2`: recording `inbound`; `;1`: recording
/// `inbound-caller-hangs-up-with-externalmedia`).
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
    let (mut play_a, mut play_b) = (Player::new(&a), Player::new(&b));
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let (until_a, until_b) = (play_a.until(), play_b.until());
        tokio::select! {
            _ = sleep_until(enter_at), if !entered => {
                entered = true;
                let ulaw = sim.cfg().inbound_sets_ulaw;
                sim.with(|e| {
                    if ulaw {
                        e.dialplan(&b, "Set", "CHANNEL(audioreadformat)=ulaw");
                        e.dialplan(&b, "Set", "CHANNEL(audiowriteformat)=ulaw");
                    }
                    // The lab's openai-app did not get these: it follows ;2
                    // only after them. Shown first so StasisStart carries
                    // the priority `Stasis()` runs at.
                    e.dialplan(&b, "Stasis", &inbound_app);
                    e.stasis_start(&b, &inbound_app, &[]);
                    e.varset(&b, "STASISSTATUS", "");
                    e.subscribe(&b, &inbound_app);
                });
            }
            _ = sleep_until(until_a.unwrap_or(far)), if until_a.is_some() => play_a.advance(sim),
            _ = sleep_until(until_b.unwrap_or(far)), if until_b.is_some() => play_b.advance(sim),
            cmd = call.ctl.recv() => match cmd {
                None => return,
                Some(Ctl::Play { channel, playback_id, media, lang, ack }) => {
                    if channel == a {
                        play_a.play(sim, playback_id, media, lang);
                    } else if channel == b && entered {
                        play_b.play(sim, playback_id, media, lang);
                    }
                    let _ = ack.send(());
                }
                Some(Ctl::StopPlayback { playback_id, ack }) => {
                    let stopped = play_a.stop(sim, &playback_id) || play_b.stop(sim, &playback_id);
                    let _ = ack.send(stopped);
                }
                Some(Ctl::Shutdown) => {
                    return sim.with(|e| {
                        shutdown_now(e, &a, Some(&b), play_a.current(), play_b.current())
                    })
                }
                // The caller (behind `;1`) goes: as our DELETE of `;1`,
                // but a hangup from the far end is not soft.
                Some(Ctl::FarEndHangup) => {
                    return sim.with(|e| {
                        e.hangup_request(&a, 16, false);
                        agent_a_gone(e, &a, &b, &play_a, &play_b);
                    })
                }
                Some(Ctl::Hangup { channel, .. }) if channel == a => {
                    return sim.with(|e| {
                        e.hangup_request(&a, 32, true);
                        agent_a_gone(e, &a, &b, &play_a, &play_b);
                    })
                }
                Some(Ctl::Hangup { .. }) => {
                    return sim.with(|e| {
                        e.hangup_request(&b, 32, true);
                        playback_interrupted(e, &b, play_b.current());
                        e.leave_bridges(&b);
                        let agent_app = e.inner.channels.get(&b).and_then(|c| c.stasis.clone());
                        e.stasis_end(&b, true);
                        if agent_app.is_some() {
                            e.varset(&b, "STASISSTATUS", "SUCCESS");
                        }
                        e.hangup_request(&b, 16, true);
                        e.hangup_request(&a, 16, false);
                        e.destroyed(&b, 16);
                        playback_interrupted(e, &a, play_a.current());
                        e.leave_bridges(&a);
                        e.stasis_end(&a, false);
                        e.varset(&a, "STASISSTATUS", "SUCCESS");
                        e.destroyed(&a, 16);
                    });
                }
            }
        }
    }
}

/// `;1` of the agent pair is hung up (its `ChannelHangupRequest` already
/// sent): recording `inbound-caller-hangs-up-with-externalmedia`, where
/// `;2` leaves Stasis after `;1` is destroyed.
fn agent_a_gone(e: &mut Emit, a: &str, b: &str, play_a: &Player, play_b: &Player) {
    playback_interrupted(e, a, play_a.current());
    e.leave_bridges(a);
    e.stasis_end(a, false);
    e.varset(a, "STASISSTATUS", "SUCCESS");
    e.hangup_request(b, 16, false);
    // A `;2` bridged with someone else took that party's caller id as its
    // connected line; `;1` shows it as its caller id, after its ChannelDestroyed.
    let relayed = match (e.inner.channels.get(a), e.inner.channels.get(b)) {
        (Some(one), Some(two)) if one.ch.caller != two.ch.connected => {
            Some(two.ch.connected.clone())
        }
        _ => None,
    };
    match relayed {
        Some(caller) => e.destroyed_then_caller_id(a, 16, caller),
        None => e.destroyed(a, 16),
    }
    playback_interrupted(e, b, play_b.current());
    leave_stasis(e, b, true);
    e.hangup_request(b, 16, true);
    e.destroyed(b, 16);
}

/// A playback in progress on a channel.
pub struct Playing {
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

/// The playbacks of one channel in Stasis, as Asterisk's playback queue
/// runs them: one plays, the others wait their turn. Each media item of a
/// playback gives `PlaybackContinuing`; a missing sound or language fails
/// the whole playback.
pub struct Player {
    channel: String,
    queue: VecDeque<(String, Vec<String>, String)>,
    playing: Option<Playing>,
}

impl Player {
    pub fn new(channel: &str) -> Player {
        Player {
            channel: channel.to_owned(),
            queue: VecDeque::new(),
            playing: None,
        }
    }

    /// When the current media item ends, if something plays.
    pub fn until(&self) -> Option<Instant> {
        self.playing.as_ref().map(|p| p.until)
    }

    pub fn current(&self) -> Option<&Playing> {
        self.playing.as_ref()
    }

    /// `POST /channels/{id}/play`: queued, and started if nothing plays.
    pub fn play(&mut self, sim: &Shared, id: String, media: Vec<String>, lang: String) {
        if media.is_empty() {
            return;
        }
        self.queue.push_back((id, media, lang));
        if self.playing.is_none() {
            self.start_next(sim);
        }
    }

    fn start_next(&mut self, sim: &Shared) {
        let Some((id, media, lang)) = self.queue.pop_front() else {
            self.playing = None;
            return;
        };
        let mut p = Playing {
            id,
            media,
            index: 0,
            lang,
            until: Instant::now(),
            ok: false,
        };
        (p.ok, p.until) = sim.media_length(&p.media[0], &p.lang);
        sim.with(|e| {
            e.playback(
                &self.channel,
                "PlaybackStarted",
                p.json(&self.channel, "playing"),
            )
        });
        self.playing = Some(p);
    }

    /// The current media item ended: on to the next item, the next queued
    /// playback, or done.
    pub fn advance(&mut self, sim: &Shared) {
        let Some(mut p) = self.playing.take() else {
            return;
        };
        let a = self.channel.as_str();
        if !p.ok {
            sim.with(|e| e.playback(a, "PlaybackFinished", p.json(a, "failed")));
            return self.start_next(sim);
        }
        if p.index + 1 < p.media.len() {
            p.index += 1;
            (p.ok, p.until) = sim.media_length(&p.media[p.index], &p.lang);
            sim.with(|e| e.playback(a, "PlaybackContinuing", p.json(a, "continuing")));
            self.playing = Some(p);
            return;
        }
        sim.with(|e| e.playback(a, "PlaybackFinished", p.json(a, "done")));
        self.start_next(sim);
    }

    /// `DELETE /playbacks/{id}`: the playing one finishes `done` (fact 15)
    /// and the next queued one starts; a queued one is dropped without an
    /// event. `false` when it is neither.
    pub fn stop(&mut self, sim: &Shared, id: &str) -> bool {
        if self.playing.as_ref().is_some_and(|p| p.id == id) {
            if let Some(p) = self.playing.take() {
                let a = self.channel.as_str();
                sim.with(|e| e.playback(a, "PlaybackFinished", p.json(a, "done")));
            }
            self.start_next(sim);
            return true;
        }
        let before = self.queue.len();
        self.queue.retain(|(q, _, _)| q != id);
        if self.queue.len() < before {
            sim.with(|e| e.inner.playbacks.remove(id));
            return true;
        }
        false
    }
}

/// What the callee's side does once the call is answered, at set times.
enum CalleeStep {
    /// A dialplan application on `;2` (`ChannelDialplan`).
    App(&'static str, String),
    /// A digit the callee sent ends: the channel facing the app (`;1`)
    /// reports it (fact 15).
    Dtmf(char),
    /// The callee hangs up.
    HangUp,
}

type Script = VecDeque<(Instant, CalleeStep)>;

/// A callee that shows `Wait(<wait>)` a moment after the answer and hangs
/// up after `hangs_up_after` (scaled): the `sim-pstn` table.
fn callee_script(sim: &Shared, hangs_up_after: Duration, wait: Option<&str>) -> Script {
    let answered_at = Instant::now();
    // The callee's `Wait()` shows a few ms after the answer (4–12 ms in the lab).
    let mut steps: Vec<(Instant, CalleeStep)> = wait
        .map(|w| {
            (
                answered_at + sim.dialplan_lag(),
                CalleeStep::App("Wait", w.to_owned()),
            )
        })
        .into_iter()
        .collect();
    steps.push((answered_at + sim.scaled(hangs_up_after), CalleeStep::HangUp));
    // A callee hanging up before its `Wait()` showed never shows it.
    steps.sort_by_key(|(at, _)| *at);
    steps.into()
}

/// The answered call in Stasis: prompts, the callee's own steps and
/// hang-up, our DELETE.
async fn answered(sim: &Shared, call: &mut Call, style: Style, mut script: Script) {
    let a = call.a.clone();
    let b = call.b.clone();
    let answered_at = Instant::now();
    let mut player = Player::new(&a);
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let play_until = player.until();
        let callee_at = script.front().map(|(t, _)| *t);
        tokio::select! {
            _ = sleep_until(callee_at.unwrap_or(far)), if callee_at.is_some() => {
                let Some((_, step)) = script.pop_front() else { continue };
                match step {
                    CalleeStep::App(app, data) => {
                        if let Some(b) = &b {
                            sim.with(|e| e.dialplan(b, app, &data));
                        }
                    }
                    CalleeStep::Dtmf(digit) => sim.with(|e| e.dtmf(&a, digit)),
                    CalleeStep::HangUp => {
                        let billed = answered_at.elapsed();
                        return sim.with(|e| callee_hangup(e, style, &a, b.as_deref(), player.current(), billed));
                    }
                }
            }
            _ = sleep_until(play_until.unwrap_or(far)), if play_until.is_some() => {
                player.advance(sim);
            }
            cmd = call.ctl.recv() => match cmd {
                None => return,
                Some(Ctl::Play { channel, playback_id, media, lang, ack }) => {
                    // Only `a` is in Stasis: the REST side refused the other half.
                    if channel == a {
                        player.play(sim, playback_id, media, lang);
                    }
                    let _ = ack.send(());
                }
                Some(Ctl::StopPlayback { playback_id, ack }) => {
                    let _ = ack.send(player.stop(sim, &playback_id));
                }
                Some(Ctl::FarEndHangup) => {
                    let billed = answered_at.elapsed();
                    return sim.with(|e| callee_hangup(e, style, &a, b.as_deref(), player.current(), billed));
                }
                Some(Ctl::Hangup { .. }) => {
                    let billed = answered_at.elapsed();
                    return sim.with(|e| our_hangup(e, style, &a, b.as_deref(), player.current(), billed));
                }
                Some(Ctl::Shutdown) => {
                    return sim.with(|e| shutdown_now(e, &a, b.as_deref(), player.current(), None));
                }
            }
        }
    }
}

/// How long a key press lasts before Asterisk reports it: `SendDTMF(1)`
/// in the lab gave `ChannelDtmfReceived` 0.2 s after it started.
pub const DTMF_LENGTH: Duration = Duration::from_millis(200);

/// The channel that reports a key pressed behind `id`: `id` if it is in
/// Stasis, else its Local partner if that one is, else `id` (fact 15).
pub fn dtmf_target(inner: &Inner, id: &str) -> Option<String> {
    let c = inner.channels.get(id)?;
    if c.stasis.is_none() {
        if let Some(p) = inner.local_partner(id) {
            if inner.channels.get(&p).is_some_and(|c| c.stasis.is_some()) {
                return Some(p);
            }
        }
    }
    Some(id.to_owned())
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
fn shutdown_now(
    e: &mut Emit,
    a: &str,
    b: Option<&str>,
    a_playing: Option<&Playing>,
    b_playing: Option<&Playing>,
) {
    if let Some(b) = b {
        e.hangup_request(b, 4, true);
    }
    e.hangup_request(a, 4, true);
    if let Some(b) = b {
        // chan_local passes each half's hangup on to the other half.
        e.hangup_request(b, 16, true);
        e.hangup_request(a, 0, false);
        // Only a `;2` that entered Stasis from the dialplan (the agent's,
        // an inbound Local call's) is in one.
        playback_interrupted(e, b, b_playing);
        leave_stasis(e, b, true);
        e.destroyed(b, 0);
    }
    playback_interrupted(e, a, a_playing);
    leave_stasis(e, a, false);
    e.destroyed(a, 0);
}

/// `core stop now` for a channel alone (externalMedia, an inbound trunk
/// call): the same pattern as `shutdown_now`.
pub fn shutdown_lone(e: &mut Emit, id: &str, playing: Option<&Playing>) {
    let via_dialplan = e.inner.channels.get(id).is_some_and(|c| c.via_dialplan);
    e.hangup_request(id, 4, true);
    playback_interrupted(e, id, playing);
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

/// A call from the PBX that entered `Stasis()` from the dialplan: a trunk
/// channel alone (`pair` `None`), or the `;2` half of a Local pair whose
/// `;1` the PBX's own dialplan dialled (`pair` is that `;1`: in no app, no
/// app subscribed to it).
pub struct Inbound {
    pub id: String,
    pub pair: Option<String>,
    pub ctl: mpsc::UnboundedReceiver<Ctl>,
}

/// Plays into the inbound channel until it is hung up: by us (`DELETE`),
/// by the caller (`FarEndHangup`), or by `core stop now`.
pub async fn inbound(sim: Arc<Shared>, mut call: Inbound) {
    let id = call.id.clone();
    let pair = call.pair.clone();
    let mut player = Player::new(&id);
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let until = player.until();
        tokio::select! {
            _ = sleep_until(until.unwrap_or(far)), if until.is_some() => player.advance(&sim),
            cmd = call.ctl.recv() => match cmd {
                // Forgotten by a restart.
                None => return,
                Some(Ctl::Play { channel, playback_id, media, lang, ack }) => {
                    if channel == id {
                        player.play(&sim, playback_id, media, lang);
                    }
                    let _ = ack.send(());
                }
                Some(Ctl::StopPlayback { playback_id, ack }) => {
                    let _ = ack.send(player.stop(&sim, &playback_id));
                }
                Some(Ctl::Hangup { channel, cause }) if channel == id => {
                    return sim.with(|e| {
                        inbound_deleted(e, &id, pair.as_deref(), player.current(), cause)
                    });
                }
                // DELETE of the `;1` half: for `;2`, the caller went.
                Some(Ctl::Hangup { .. }) | Some(Ctl::FarEndHangup) => {
                    return sim.with(|e| {
                        inbound_caller_gone(e, &id, pair.as_deref(), player.current())
                    });
                }
                Some(Ctl::Shutdown) => {
                    return sim.with(|e| match &pair {
                        Some(one) => shutdown_now(e, one, Some(&id), None, player.current()),
                        None => shutdown_lone(e, &id, player.current()),
                    });
                }
            }
        }
    }
}

/// Our `DELETE` of an inbound channel. For a Local `;2`, recording
/// `inbound` (its `;2`): the app that entered Stasis from the dialplan hears
/// only `ChannelHangupRequest` 32 soft and `StasisEnd`; `;1` goes with it.
fn inbound_deleted(
    e: &mut Emit,
    id: &str,
    pair: Option<&str>,
    playing: Option<&Playing>,
    cause: i64,
) {
    e.hangup_request(id, 32, true);
    playback_interrupted(e, id, playing);
    leave_stasis(e, id, true);
    match pair {
        Some(one) => {
            e.hangup_request(id, 16, true);
            e.hangup_request(one, 16, false);
            e.destroyed(id, cause);
            e.destroyed(one, cause);
        }
        None => e.destroyed(id, cause),
    }
}

/// The caller hangs up an inbound channel: `ChannelHangupRequest` 16, not
/// soft, then as recording `inbound-caller-hangs-up-with-externalmedia`
/// for `;2` (its `;1` is destroyed first).
fn inbound_caller_gone(e: &mut Emit, id: &str, pair: Option<&str>, playing: Option<&Playing>) {
    e.hangup_request(id, 16, false);
    playback_interrupted(e, id, playing);
    leave_stasis(e, id, true);
    if let Some(one) = pair {
        e.destroyed(one, 16);
        e.hangup_request(id, 16, true);
    }
    e.destroyed(id, 16);
}
