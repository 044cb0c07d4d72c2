//! One call, played out as the lab's Asterisk did: the event sequences
//! below are transcribed from `tests/fixtures/ari/events.jsonl`, one function per
//! recorded situation, so each can be checked against it. An originated
//! call runs `run`; an inbound one, `inbound`. Playbacks on any channel in
//! Stasis go through a `Player`. A channel sent back to the dialplan with
//! `continue` (fact 16) stays with its call's task, which runs the target
//! context as a `Continued` (the lab's `agents`, `AMD()` that brings the
//! channel back to Stasis, a hop into another Stasis app, or a queue that
//! waits). The callee's own script (its dialplan, keys, hang-up) runs on
//! regardless of where `continue` sent the channel facing the app, as the
//! far end of a real call does.
//!
//! `a` is the channel the originate returned (`;1` of a Local pair, or the
//! only channel of a direct trunk call); `b` is the Local `;2` half.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::dialplan::{Callee, Greeting, Route};
use super::state::{new_channel, Ctl, Emit, Inner, Target};
use super::{AmdVerdict, Shared};
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
    /// The lab's `agents` pair: as `Pstn`, but when the agent hangs up its
    /// `;2` is destroyed before `;1` leaves its bridge and Stasis
    /// (recording `callee-dtmf-bridge`).
    Agents,
    FromVoip,
    Direct,
}

/// What a hang-up reports besides the route's own teardown.
#[derive(Clone, Copy)]
struct Pending {
    /// `STASISSTATUS=SUCCESS` once per `Stasis()` that returns at the
    /// hang-up: two when the channel is back in Stasis from the dialplan,
    /// since the originate's `Stasis()` ran that dialplan (fact 17).
    stasis_returns: usize,
    /// `;1` is in `AMD()`, which gives up with `AMDSTATUS=HANGUP` and an
    /// empty `AMDCAUSE` (Asterisk's `app_amd.c`; not in the recordings).
    in_amd: bool,
    /// `;2` is in `Playback()`, which sets `PLAYBACKSTATUS` as it is cut
    /// (recordings `amd-human`, `amd-machine`).
    callee_in_playback: bool,
}

impl Pending {
    fn stasis_returned(&self, e: &mut Emit, a: &str) {
        for _ in 0..self.stasis_returns {
            e.varset(a, "STASISSTATUS", "SUCCESS");
        }
    }

    fn amd_gave_up(&self, e: &mut Emit, a: &str) {
        if self.in_amd {
            e.varset(a, "AMDSTATUS", "HANGUP");
            e.varset(a, "AMDCAUSE", "");
        }
    }

    fn callee_playback_cut(&self, e: &mut Emit, b: &str) {
        if self.callee_in_playback {
            e.varset(b, "PLAYBACKSTATUS", "SUCCESS");
        }
    }
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
        Route::LocalGreeting { number, greeting } => {
            greets(&sim, &mut call, &number, greeting).await
        }
        Route::LocalAgents { number } => agents(&sim, &mut call, &number).await,
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
                // Not in Stasis: the REST side answers 409.
                Some(Ctl::Continue { ack, .. }) => drop(ack),
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
            let amd = sim.amd_verdict(number, None);
            answered(sim, call, Style::Pstn, script, amd).await;
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
    if !answers_at_once(sim, call, &format!("{number}@sim-pstn-dtmf")) {
        return;
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
    let amd = sim.amd_verdict(number, None);
    answered(sim, call, Style::Pstn, script, amd).await;
}

/// The later lab's Local callees answer at once: `;2` runs `Answer()` and
/// `;1` enters Stasis (recordings `callee-dtmf`, `callee-dtmf-bridge`,
/// `amd-*`). `false` when the app is not registered and the call is gone.
fn answers_at_once(sim: &Shared, call: &Call, ds: &str) -> bool {
    let (a, b) = (call.a.clone(), call.b.clone().unwrap_or_default());
    let in_stasis = sim.with(|e| {
        e.dial(&a, "", ds);
        e.dialplan(&b, "Answer", "");
        e.state(&b, "Up");
        e.state(&a, "Up");
        e.dial(&a, "ANSWER", ds);
        e.varset(&a, "STASISSTATUS", "");
        e.stasis_start(&a, &call.app, &[])
    });
    if !in_stasis {
        sim.with(|e| stasis_failed(e, &a, Some(&b)));
    }
    in_stasis
}

/// `Answer()` on a Local `;2` returns once a frame arrives from `;1`, or
/// after 0.5 s: with nothing played to the callee (the `amd-*` and
/// `callee-dtmf-bridge` recordings), its next step comes 0.5 s late.
const ANSWER_WAITS: Duration = Duration::from_millis(500);

/// `Local/<n>@sim-human|sim-notsure|sim-machine` (recordings `amd-human`,
/// `amd-notsure`, `amd-machine`): the callee greets, then waits 15 s and
/// hangs up. `AMD()` on `;1` decides as recorded for the greeting unless
/// `SimConfig.amd` says otherwise for the number.
async fn greets(sim: &Shared, call: &mut Call, number: &str, greeting: Greeting) {
    if !answers_at_once(sim, call, &format!("{number}@{}", greeting.context())) {
        return;
    }
    let ms = |ms: u64| sim.scaled(Duration::from_millis(ms));
    let mut t = Instant::now() + sim.scaled(ANSWER_WAITS);
    let mut script = Script::new();
    let play = |script: &mut Script, t: &mut Instant, sound: &str, length: u64| {
        script.push_back((*t, CalleeStep::App("Playback", sound.into())));
        *t += ms(length);
        script.push_back((*t, CalleeStep::Var("PLAYBACKSTATUS", "SUCCESS")));
    };
    if greeting == Greeting::Machine {
        play(&mut script, &mut t, "vm-intro", 5660);
    } else {
        script.push_back((t, CalleeStep::App("Wait", "0.3".into())));
        t += ms(300);
        play(&mut script, &mut t, "hello-world", 1420);
        if greeting == Greeting::Human {
            play(&mut script, &mut t, "silence/2", 2000);
        }
    }
    script.push_back((t, CalleeStep::App("Wait", "15".into())));
    script.push_back((t + ms(15_000), CalleeStep::HangUp));
    let amd = sim.amd_verdict(number, Some(greeting));
    answered(sim, call, Style::Pstn, script, amd).await;
}

/// `Local/100@agents` originated into Stasis (recording
/// `callee-dtmf-bridge`): the agent's `;2` answers, says hello, waits 3 s
/// and hangs up.
async fn agents(sim: &Shared, call: &mut Call, number: &str) {
    if !answers_at_once(sim, call, &format!("{number}@agents")) {
        return;
    }
    let hello = Instant::now() + sim.scaled(ANSWER_WAITS);
    let said = hello + sim.scaled(Duration::from_millis(1420));
    let script = VecDeque::from([
        (hello, CalleeStep::App("Playback", "hello-world".into())),
        (said, CalleeStep::Var("PLAYBACKSTATUS", "SUCCESS")),
        (said, CalleeStep::App("Wait", "3".into())),
        (
            said + sim.scaled(Duration::from_secs(3)),
            CalleeStep::HangUp,
        ),
    ]);
    let amd = sim.amd_verdict(number, None);
    answered(sim, call, Style::Agents, script, amd).await;
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
            let amd = sim.amd_verdict(number, None);
            answered(sim, call, Style::FromVoip, script, amd).await;
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
            let amd = sim.amd_verdict(number, None);
            answered(sim, call, Style::Direct, script, amd).await;
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
    let amd = sim.amd_verdict(super::dialplan::AGENT_NUMBER, None);
    let (mut ha, mut hb) = (Half::new(&a, amd.clone()), Half::new(&b, amd));
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let (until_a, until_b) = (ha.player.until(), hb.player.until());
        let (dialplan_a, dialplan_b) = (ha.dialplan_at(), hb.dialplan_at());
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
            _ = sleep_until(until_a.unwrap_or(far)), if until_a.is_some() => {
                ha.player.advance(sim);
                ha.settle(sim);
            }
            _ = sleep_until(until_b.unwrap_or(far)), if until_b.is_some() => {
                hb.player.advance(sim);
                hb.settle(sim);
            }
            // `Hangup()` in the dialplan a continued half went to.
            _ = sleep_until(dialplan_a.unwrap_or(far)), if dialplan_a.is_some() => {
                if ha.dialplan_step(sim) {
                    return sim.with(|e| agent_a_gone(e, &a, &b, &ha.player, &hb.player));
                }
            }
            _ = sleep_until(dialplan_b.unwrap_or(far)), if dialplan_b.is_some() => {
                if hb.dialplan_step(sim) {
                    return sim.with(|e| agent_b_gone(e, &a, &b, &ha.player, &hb.player));
                }
            }
            cmd = call.ctl.recv() => match cmd {
                None => return,
                Some(Ctl::Play { channel, playback_id, media, lang, ack }) => {
                    if channel == a {
                        ha.play(sim, playback_id, media, lang);
                    } else if channel == b && entered {
                        hb.play(sim, playback_id, media, lang);
                    }
                    let _ = ack.send(());
                }
                Some(Ctl::StopPlayback { playback_id, ack }) => {
                    let stopped = ha.player.stop(sim, &playback_id) || hb.player.stop(sim, &playback_id);
                    let _ = ack.send(stopped);
                    ha.settle(sim);
                    hb.settle(sim);
                }
                Some(Ctl::Continue { channel, target, ack }) => {
                    if channel == a {
                        ha.continue_to(sim, target, ack);
                    } else if channel == b && entered {
                        hb.continue_to(sim, target, ack);
                    }
                }
                Some(Ctl::Shutdown) => {
                    return sim.with(|e| {
                        shutdown_now(e, &a, Some(&b), ha.player.current(), hb.player.current())
                    })
                }
                // The caller (behind `;1`) goes: as our DELETE of `;1`,
                // but a hangup from the far end is not soft.
                Some(Ctl::FarEndHangup) => {
                    return sim.with(|e| {
                        e.hangup_request(&a, 16, false);
                        agent_a_gone(e, &a, &b, &ha.player, &hb.player);
                    })
                }
                Some(Ctl::Hangup { channel, .. }) if channel == a => {
                    return sim.with(|e| {
                        e.hangup_request(&a, 32, true);
                        agent_a_gone(e, &a, &b, &ha.player, &hb.player);
                    })
                }
                Some(Ctl::Hangup { .. }) => {
                    return sim.with(|e| {
                        e.hangup_request(&b, 32, true);
                        agent_b_gone(e, &a, &b, &ha.player, &hb.player);
                    });
                }
            }
        }
    }
}

/// `;2` of the agent pair is hung up (its `ChannelHangupRequest` already
/// sent): recording `inbound`.
fn agent_b_gone(e: &mut Emit, a: &str, b: &str, play_a: &Player, play_b: &Player) {
    playback_interrupted(e, b, play_b.current());
    e.leave_bridges(b);
    let agent_app = e.inner.channels.get(b).and_then(|c| c.stasis.clone());
    e.stasis_end(b, true);
    if agent_app.is_some() {
        e.varset(b, "STASISSTATUS", "SUCCESS");
    }
    e.hangup_request(b, 16, true);
    e.hangup_request(a, 16, false);
    e.destroyed(b, 16);
    playback_interrupted(e, a, play_a.current());
    e.leave_bridges(a);
    e.stasis_end(a, false);
    e.varset(a, "STASISSTATUS", "SUCCESS");
    e.destroyed(a, 16);
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

    /// Nothing plays or waits to: a `continue` can run.
    pub fn idle(&self) -> bool {
        self.playing.is_none() && self.queue.is_empty()
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
            if p.ok {
                e.inner.played_start(&self.channel, &p.media[0], &p.lang);
            }
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
        sim.with(|e| e.inner.played_end(a, false));
        if p.index + 1 < p.media.len() {
            p.index += 1;
            (p.ok, p.until) = sim.media_length(&p.media[p.index], &p.lang);
            sim.with(|e| {
                if p.ok {
                    e.inner.played_start(a, &p.media[p.index], &p.lang);
                }
                e.playback(a, "PlaybackContinuing", p.json(a, "continuing"))
            });
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
                sim.with(|e| {
                    e.inner.played_end(a, true);
                    e.playback(a, "PlaybackFinished", p.json(a, "done"))
                });
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
    /// A variable the callee's dialplan sets on `;2` (`ChannelVarset`).
    Var(&'static str, &'static str),
    /// A digit the callee sent ends: the channel facing the app (`;1`)
    /// reports it (fact 15), if it is in Stasis.
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

/// The keys of `SimConfig.dtmf` for the call's number, added to the
/// callee's script: each reported `DTMF_LENGTH` after it is pressed.
fn with_keys(sim: &Shared, call: &Call, script: Script, answered_at: Instant) -> Script {
    let keys = sim.dtmf_script(call.route.number());
    if keys.is_empty() {
        return script;
    }
    let length = sim.scaled(DTMF_LENGTH);
    let mut steps: Vec<(Instant, CalleeStep)> = script.into();
    steps.extend(
        keys.into_iter()
            .map(|(after, digit)| (answered_at + after + length, CalleeStep::Dtmf(digit))),
    );
    // Stable: the callee's own steps due at the same time keep their order.
    steps.sort_by_key(|(at, _)| *at);
    steps.into()
}

/// The answered call in Stasis: prompts, the callee's own steps and
/// hang-up, our DELETE, and `continue` back to the dialplan (and back to
/// Stasis from `AMD()` or into another app).
async fn answered(sim: &Shared, call: &mut Call, style: Style, script: Script, amd: AmdVerdict) {
    let a = call.a.clone();
    let b = call.b.clone();
    let answered_at = Instant::now();
    let mut script = with_keys(sim, call, script, answered_at);
    let mut half = Half::new(&a, amd);
    let mut callee_in_playback = false;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let pending = Pending {
            stasis_returns: half.stasis_returns(),
            in_amd: half.in_amd(),
            callee_in_playback,
        };
        let play_until = half.player.until();
        let callee_at = script.front().map(|(t, _)| *t);
        let dialplan_at = half.dialplan_at();
        tokio::select! {
            _ = sleep_until(callee_at.unwrap_or(far)), if callee_at.is_some() => {
                let Some((_, step)) = script.pop_front() else { continue };
                match step {
                    CalleeStep::App(app, data) => {
                        callee_in_playback = app == "Playback";
                        if let Some(b) = &b {
                            sim.with(|e| e.dialplan(b, app, &data));
                        }
                    }
                    CalleeStep::Var(var, value) => {
                        if let Some(b) = &b {
                            sim.with(|e| e.varset(b, var, value));
                        }
                    }
                    // Out of Stasis (in `AMD()`), the key is lost to the app.
                    CalleeStep::Dtmf(digit) => sim.with(|e| {
                        if e.inner.channels.get(&a).is_some_and(|c| c.stasis.is_some()) {
                            e.dtmf(&a, digit);
                        }
                    }),
                    CalleeStep::HangUp => {
                        let billed = answered_at.elapsed();
                        return sim.with(|e| callee_hangup(e, style, &a, b.as_deref(), half.player.current(), billed, pending));
                    }
                }
            }
            _ = sleep_until(play_until.unwrap_or(far)), if play_until.is_some() => {
                half.player.advance(sim);
                half.settle(sim);
            }
            _ = sleep_until(dialplan_at.unwrap_or(far)), if dialplan_at.is_some() => {
                if half.dialplan_step(sim) {
                    let billed = answered_at.elapsed();
                    return sim.with(|e| dialplan_hangup(e, style, &a, b.as_deref(), billed));
                }
            }
            cmd = call.ctl.recv() => match cmd {
                None => return,
                Some(Ctl::Play { channel, playback_id, media, lang, ack }) => {
                    // Only `a` is in Stasis: the REST side refused the other half.
                    if channel == a {
                        half.play(sim, playback_id, media, lang);
                    }
                    let _ = ack.send(());
                }
                Some(Ctl::StopPlayback { playback_id, ack }) => {
                    let _ = ack.send(half.player.stop(sim, &playback_id));
                    half.settle(sim);
                }
                Some(Ctl::Continue { channel, target, ack }) => {
                    if channel == a {
                        half.continue_to(sim, target, ack);
                    }
                }
                Some(Ctl::FarEndHangup) => {
                    let billed = answered_at.elapsed();
                    return sim.with(|e| callee_hangup(e, style, &a, b.as_deref(), half.player.current(), billed, pending));
                }
                Some(Ctl::Hangup { .. }) => {
                    let billed = answered_at.elapsed();
                    return sim.with(|e| our_hangup(e, style, &a, b.as_deref(), half.player.current(), billed, pending));
                }
                Some(Ctl::Shutdown) => {
                    return sim.with(|e| shutdown_now(e, &a, b.as_deref(), half.player.current(), None));
                }
            }
        }
    }
}

/// A channel in Stasis as its call's task sees it: its playbacks, and
/// where a `continue` takes it. Asterisk runs a channel's commands in
/// order, so a `continue` waits for the playbacks queued before it; once
/// it is asked for, no new playback starts.
struct Half {
    id: String,
    player: Player,
    pending: Option<Target>,
    continued: Option<Continued>,
    /// What `AMD()` decides for the party behind this channel.
    amd: AmdVerdict,
    /// In a `Stasis()` that the dialplan ran after a `continue` (back from
    /// `AMD()`, or a hop into another app): the originate's own `Stasis()`
    /// still waits to return, at the hang-up.
    nested: bool,
}

impl Half {
    fn new(id: &str, amd: AmdVerdict) -> Half {
        Half {
            id: id.to_owned(),
            player: Player::new(id),
            pending: None,
            continued: None,
            amd,
            nested: false,
        }
    }

    /// How many `Stasis()` return (each `STASISSTATUS=SUCCESS`) if the
    /// channel hangs up now.
    fn stasis_returns(&self) -> usize {
        if self.nested && self.continued.is_none() {
            2
        } else {
            1
        }
    }

    fn in_amd(&self) -> bool {
        self.continued.as_ref().is_some_and(|c| c.in_amd)
    }

    fn leaving(&self) -> bool {
        self.pending.is_some() || self.continued.is_some()
    }

    fn play(&mut self, sim: &Shared, playback_id: String, media: Vec<String>, lang: String) {
        if self.leaving() {
            sim.with(|e| e.inner.playbacks.remove(&playback_id));
        } else {
            self.player.play(sim, playback_id, media, lang);
        }
    }

    /// `POST /channels/{id}/continue`: acked once queued; a second one is
    /// refused (the channel is no longer in Stasis for the REST side).
    fn continue_to(&mut self, sim: &Shared, target: Target, ack: oneshot::Sender<()>) {
        if self.leaving() {
            return;
        }
        self.pending = Some(target);
        self.settle(sim);
        let _ = ack.send(());
    }

    /// Leaves Stasis if a continue waits and nothing plays any more.
    fn settle(&mut self, sim: &Shared) {
        if self.player.idle() {
            if let Some(target) = self.pending.take() {
                let nested = std::mem::take(&mut self.nested);
                self.continued = Some(leave_for(sim, &self.id, target, &self.amd, nested));
            }
        }
    }

    /// When the continued channel's next dialplan step is due.
    fn dialplan_at(&self) -> Option<Instant> {
        self.continued.as_ref().and_then(Continued::next_at)
    }

    /// Runs the due dialplan step; `true` when the channel hangs up. Back
    /// in Stasis, the channel plays and continues again like any other.
    fn dialplan_step(&mut self, sim: &Shared) -> bool {
        let Some(c) = self.continued.as_mut() else {
            return false;
        };
        match sim.with(|e| c.step(e)) {
            Next::Ran => false,
            Next::HangUp => true,
            Next::InStasis => {
                self.continued = None;
                self.nested = true;
                false
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

/// One step of the dialplan a continued channel runs.
enum Step {
    App(&'static str, String),
    Var(&'static str, String),
    /// `Stasis(<app>,<args>)`: back in Stasis, the dialplan waits for it.
    Stasis {
        app: String,
        args: Vec<String>,
    },
    /// `Hangup()`: the route's teardown follows.
    HangUp,
}

/// Where a dialplan step left the channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Still in the dialplan.
    Ran,
    /// Hung up (`Hangup()`, its `ChannelDialplan` sent, or a `Stasis()`
    /// that failed): the caller tears the channel down.
    HangUp,
    /// In Stasis again (its `StasisStart` sent).
    InStasis,
}

/// A channel that left Stasis with `continue` and runs the dialplan of its
/// target, step by step.
pub struct Continued {
    channel: String,
    steps: VecDeque<(Instant, Step)>,
    /// `AMD()` is listening.
    in_amd: bool,
}

impl Continued {
    fn next_at(&self) -> Option<Instant> {
        self.steps.front().map(|(at, _)| *at)
    }

    /// Runs the next step.
    fn step(&mut self, e: &mut Emit) -> Next {
        let id = self.channel.as_str();
        let step = self.steps.pop_front();
        self.in_amd = matches!(step, Some((_, Step::App("AMD", _))));
        match step {
            Some((_, Step::App(app, data))) => e.dialplan(id, app, &data),
            Some((_, Step::Var(var, value))) => e.varset(id, var, &value),
            Some((_, Step::Stasis { app, args })) => {
                let data = std::iter::once(app.as_str())
                    .chain(args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(",");
                e.dialplan(id, "Stasis", &data);
                e.varset(id, "STASISSTATUS", "");
                let followed = e
                    .inner
                    .channels
                    .get(id)
                    .is_some_and(|c| c.subscribers.contains(&app));
                if e.stasis_start(id, &app, &args) {
                    if !followed {
                        // Followed from its StasisStart on, as an inbound call is.
                        e.subscribe(id, &app);
                        if let Some(c) = e.inner.channels.get_mut(id) {
                            c.hopped_into = Some(app);
                        }
                    }
                    return Next::InStasis;
                }
                // Nobody registered the app: `Stasis()` fails and the
                // channel hangs up with no `Hangup()` of its own.
                e.varset(id, "STASISSTATUS", "FAILED");
                return Next::HangUp;
            }
            Some((_, Step::HangUp)) => {
                e.dialplan(id, "Hangup", "");
                return Next::HangUp;
            }
            None => {}
        }
        Next::Ran
    }

    /// Runs the steps already due that only show in events: the
    /// `ChannelDialplan` right after `StasisEnd`.
    fn run_due(&mut self, e: &mut Emit) {
        let now = Instant::now();
        while self
            .steps
            .front()
            .is_some_and(|(at, step)| *at <= now && matches!(step, Step::App(..) | Step::Var(..)))
        {
            self.step(e);
        }
    }
}

/// `continue` (fact 16, recording `callee-dtmf`): the channel departs its
/// bridge, leaves Stasis (its app keeps following a channel it created)
/// and runs the target: the lab's `agents` (`Answer()`,
/// `Playback(hello-world)`, `Wait(3)`, `Hangup()`); an AMD context
/// (`amd_contexts`, fact 17: `AMD()`, `amd`'s verdict after its delay,
/// `Stasis(<the app it left>,amd,<status>,<cause>)`, `Hangup()`); a context
/// of `stasis_contexts` (`Stasis(<app>,<args>)`, `Hangup()`); or any other
/// context as a queue that holds the channel (`Queue(<context>)`) until
/// the far end hangs up, we `DELETE` it, or `continue_hangup_after` ends
/// it. The originate's `STASISSTATUS=SUCCESS` waits for the hang-up; a
/// `Stasis()` the dialplan ran (`nested`) returns at once.
pub fn leave_for(
    sim: &Shared,
    channel: &str,
    target: Target,
    amd: &AmdVerdict,
    nested: bool,
) -> Continued {
    let now = Instant::now();
    let mut steps = VecDeque::new();
    let first = target.priority == 1;
    let hop = if first {
        sim.stasis_context(&target.context, &target.exten)
    } else {
        None
    };
    if target.context == "agents" {
        let played = now + sim.scaled(Duration::from_millis(1420));
        steps.push_back((now, Step::App("Answer", String::new())));
        steps.push_back((now, Step::App("Playback", "hello-world".into())));
        steps.push_back((played, Step::Var("PLAYBACKSTATUS", "SUCCESS".into())));
        steps.push_back((played, Step::App("Wait", "3".into())));
        steps.push_back((played + sim.scaled(Duration::from_secs(3)), Step::HangUp));
    } else if first
        && (target.exten == "s" || target.exten == "message")
        && sim.is_amd_context(&target.context)
    {
        let app = sim
            .inner()
            .channels
            .get(channel)
            .and_then(|c| c.stasis.clone())
            .unwrap_or_else(|| "overdue-app".into());
        let decided = now + sim.scaled(amd.after);
        steps.push_back((now, Step::App("AMD", String::new())));
        steps.push_back((decided, Step::Var("AMDSTATUS", amd.status.clone())));
        steps.push_back((decided, Step::Var("AMDCAUSE", amd.cause.clone())));
        let args = vec!["amd".to_owned(), amd.status.clone(), amd.cause.clone()];
        // The shipped dialplan's `message` extension lets a machine's
        // greeting end before handing back (`WaitForSilence`): here the
        // rest of the lab's 5.66 s `vm-intro` after its 1.66 s verdict.
        let back = if target.exten == "message" && amd.status == "MACHINE" {
            steps.push_back((decided, Step::App("WaitForSilence", "1500,1,20".into())));
            decided + sim.scaled(Duration::from_secs(4))
        } else {
            decided
        };
        steps.push_back((back, Step::Stasis { app, args }));
        steps.push_back((back, Step::HangUp));
    } else if let Some((app, args)) = hop {
        steps.push_back((now, Step::Stasis { app, args }));
        steps.push_back((now, Step::HangUp));
    } else {
        steps.push_back((now, Step::App("Queue", target.context.clone())));
        if let Some(after) = sim.continue_hangup_after() {
            steps.push_back((now + after, Step::HangUp));
        }
    }
    let mut continued = Continued {
        channel: channel.to_owned(),
        steps,
        in_amd: false,
    };
    sim.with(|e| {
        let unsubscribe = e
            .inner
            .channels
            .get(channel)
            .is_some_and(|c| c.via_dialplan);
        e.leave_bridges(channel);
        e.stasis_end(channel, unsubscribe);
        if nested {
            e.varset(channel, "STASISSTATUS", "SUCCESS");
        }
        if let Some(c) = e.inner.channels.get_mut(channel) {
            // Each step's `ChannelDialplan` moves one priority on.
            c.ch.dialplan = DialplanCep {
                context: target.context.clone(),
                exten: target.exten.clone(),
                priority: target.priority - 1,
                app_name: String::new(),
                app_data: String::new(),
            };
        }
        e.inner.continued.insert(channel.to_owned(), target);
        continued.run_due(e);
    });
    continued
}

/// A continued channel no call task plays (externalMedia): its dialplan
/// runs here until `Hangup()`, until it is back in Stasis (where the REST
/// side tears it down itself), or until it is gone.
pub async fn lone_continued(sim: Arc<Shared>, mut continued: Continued) {
    while let Some(at) = continued.next_at() {
        sleep_until(at).await;
        let id = continued.channel.clone();
        let done = sim.with(|e| {
            if !e.inner.channels.contains_key(&id) {
                return true;
            }
            match continued.step(e) {
                Next::Ran => false,
                Next::InStasis => true,
                Next::HangUp => {
                    e.varset(&id, "STASISSTATUS", "SUCCESS");
                    e.destroyed(&id, 16);
                    true
                }
            }
        });
        if done {
            return;
        }
    }
}

/// The continued channel's dialplan ran `Hangup()` (its `ChannelDialplan`
/// sent): recording `callee-dtmf` for a `sim-pstn` pair. `;1` gets no
/// `ChannelHangupRequest` of its own.
fn dialplan_hangup(e: &mut Emit, style: Style, a: &str, b: Option<&str>, billed: Duration) {
    e.varset(a, "STASISSTATUS", "SUCCESS");
    match (style, b) {
        (Style::Pstn | Style::Agents, Some(b)) => {
            e.hangup_request(b, 16, false);
            e.destroyed(a, 16);
            e.hangup_request(b, 16, true);
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

/// Our `DELETE` of the answered channel (recordings `answer`, `dialplan`,
/// `amd-*` back in Stasis, `callee-dtmf-bridge` alone in its bridge).
fn our_hangup(
    e: &mut Emit,
    style: Style,
    a: &str,
    b: Option<&str>,
    playing: Option<&Playing>,
    billed: Duration,
    pending: Pending,
) {
    e.hangup_request(a, 32, true);
    pending.amd_gave_up(e, a);
    playback_interrupted(e, a, playing);
    e.leave_bridges(a);
    e.stasis_end(a, false);
    pending.stasis_returned(e, a);
    match (style, b) {
        (Style::Pstn | Style::Agents, Some(b)) => {
            e.hangup_request(b, 16, false);
            pending.callee_playback_cut(e, b);
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

/// The callee hangs up (recordings `short`, `fv-short`; the agent in
/// `callee-dtmf-bridge`). During `AMD()` the channel dies in the dialplan:
/// no second `StasisStart`.
fn callee_hangup(
    e: &mut Emit,
    style: Style,
    a: &str,
    b: Option<&str>,
    playing: Option<&Playing>,
    billed: Duration,
    pending: Pending,
) {
    let leave = |e: &mut Emit| {
        pending.amd_gave_up(e, a);
        playback_interrupted(e, a, playing);
        e.leave_bridges(a);
        e.stasis_end(a, false);
        pending.stasis_returned(e, a);
    };
    match (style, b) {
        (Style::Pstn, Some(b)) => {
            e.dialplan(b, "Hangup", "");
            e.hangup_request(b, 16, true);
            e.hangup_request(a, 16, false);
            leave(e);
            e.destroyed(a, 16);
            e.destroyed(b, 16);
        }
        (Style::Agents, Some(b)) => {
            e.dialplan(b, "Hangup", "");
            e.hangup_request(b, 16, true);
            e.hangup_request(a, 16, false);
            e.destroyed(b, 16);
            leave(e);
            e.destroyed(a, 16);
        }
        (Style::FromVoip, Some(b)) => {
            dial_times(e, b, billed);
            e.hangup_request(b, 16, true);
            e.varset(a, "CHANLOCALSTATUS", "ANSWER");
            e.hangup_request(a, 16, false);
            e.destroyed(b, 16);
            leave(e);
            e.destroyed(a, 16);
        }
        _ => {
            e.hangup_request(a, 16, false);
            leave(e);
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
    let mut half = Half::new(&id, sim.amd_verdict("", None));
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let until = half.player.until();
        let dialplan_at = half.dialplan_at();
        tokio::select! {
            _ = sleep_until(until.unwrap_or(far)), if until.is_some() => {
                half.player.advance(&sim);
                half.settle(&sim);
            }
            _ = sleep_until(dialplan_at.unwrap_or(far)), if dialplan_at.is_some() => {
                if half.dialplan_step(&sim) {
                    return sim.with(|e| inbound_dialplan_hangup(e, &id, pair.as_deref()));
                }
            }
            cmd = call.ctl.recv() => match cmd {
                // Forgotten by a restart.
                None => return,
                Some(Ctl::Play { channel, playback_id, media, lang, ack }) => {
                    if channel == id {
                        half.play(&sim, playback_id, media, lang);
                    }
                    let _ = ack.send(());
                }
                Some(Ctl::StopPlayback { playback_id, ack }) => {
                    let _ = ack.send(half.player.stop(&sim, &playback_id));
                    half.settle(&sim);
                }
                Some(Ctl::Continue { channel, target, ack }) => {
                    if channel == id {
                        half.continue_to(&sim, target, ack);
                    }
                }
                Some(Ctl::Hangup { channel, cause }) if channel == id => {
                    return sim.with(|e| {
                        inbound_deleted(e, &id, pair.as_deref(), half.player.current(), cause)
                    });
                }
                // DELETE of the `;1` half: for `;2`, the caller went.
                Some(Ctl::Hangup { .. }) | Some(Ctl::FarEndHangup) => {
                    return sim.with(|e| {
                        inbound_caller_gone(e, &id, pair.as_deref(), half.player.current())
                    });
                }
                Some(Ctl::Shutdown) => {
                    return sim.with(|e| match &pair {
                        Some(one) => shutdown_now(e, one, Some(&id), None, half.player.current()),
                        None => shutdown_lone(e, &id, half.player.current()),
                    });
                }
            }
        }
    }
}

/// A continued inbound channel's dialplan ran `Hangup()`. Its app stopped
/// following it at `StasisEnd`, so nobody hears this.
fn inbound_dialplan_hangup(e: &mut Emit, id: &str, pair: Option<&str>) {
    e.varset(id, "STASISSTATUS", "SUCCESS");
    match pair {
        Some(one) => {
            e.hangup_request(one, 16, false);
            e.destroyed(id, 16);
            e.destroyed(one, 16);
        }
        None => e.destroyed(id, 16),
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
