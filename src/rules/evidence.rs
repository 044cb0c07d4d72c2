//! Deciding how a call ended, from everything its events told us and what
//! the daemon itself did (README "A pass", and the facts drawn from the
//! recordings in `tests/fixtures/ari/`). Pure: evidence in, outcome out.
//!
//! On Local channels the `;1` cause does not tell busy from congestion (it
//! is 0 or 16), so the outcome comes from, in order: the last non-empty
//! `Dial.dialstatus` whose peer is our channel, `CHANLOCALSTATUS`, the `;2`
//! half's cause, then our own cause. Cause 0 says nothing; a direct trunk
//! channel carries the Q.850 cause itself.

use crate::ari::Event;
use crate::rules::outcome::Outcome;

/// How the prompt went on an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prompt {
    #[default]
    NotStarted,
    Playing,
    Done,
    /// `PlaybackFinished` with state `failed`; `hangup_seen` tells whether
    /// the callee had already hung up (then it was an early hang-up, not a
    /// missing sound).
    Failed {
        hangup_seen: bool,
    },
}

/// Which playbacks on our channel are the reminder whose end counts as
/// heard. With the keypad menu, the options and confirmation prompts are
/// not, nor a reminder a key cut (its `PlaybackFinished` says `done`
/// although it was cut, LAB.md fact 15).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Counted {
    /// Every playback: the one-prompt call.
    #[default]
    Every,
    /// Only the playback with this id.
    Only(String),
    /// None until the next reminder starts.
    Nothing,
}

impl Counted {
    fn counts(&self, playback_id: &str) -> bool {
        match self {
            Counted::Every => true,
            Counted::Only(id) => id == playback_id,
            Counted::Nothing => false,
        }
    }
}

/// What we learnt about one call from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Our channel id (`;1`, or the only channel of a direct call).
    pub channel: String,
    pub answered: bool,
    pub ringing: bool,
    pub last_dialstatus: Option<String>,
    pub chanlocalstatus: Option<String>,
    pub own_cause: Option<i64>,
    pub other_cause: Option<i64>,
    /// A real (not soft) hang-up request reached one of our channels.
    pub hangup_requested: bool,
    pub prompt: Prompt,
    /// Which playbacks `prompt` follows.
    pub counted: Counted,
    pub own_destroyed: bool,
    pub other_destroyed: bool,
    pub in_stasis: bool,
    /// Asterisk hung our channel up itself: a soft hang-up request with
    /// the shutdown flag (cause 4) on either half, as `core stop now` and
    /// a restart do (recording `shutdown-mid-prompt`). Not the callee.
    pub torn_down_by_asterisk: bool,
}

impl Evidence {
    pub fn new(channel: impl Into<String>) -> Evidence {
        Evidence {
            channel: channel.into(),
            ..Evidence::default()
        }
    }

    fn is_own(&self, id: &str) -> bool {
        id == self.channel
    }

    /// The `;2` half of a Local pair we originated with our own id.
    fn is_other(&self, id: &str) -> bool {
        id.strip_suffix(";2")
            .is_some_and(|base| base == self.channel)
    }

    /// Takes in one event; events about other channels are ignored.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Dial {
                peer,
                dialstatus,
                caller,
                ..
            } if caller.is_none() && self.is_own(&peer.id) && !dialstatus.is_empty() => {
                if dialstatus == "RINGING" {
                    self.ringing = true;
                }
                self.last_dialstatus = Some(dialstatus.clone());
            }
            Event::ChannelStateChange { channel }
                if self.is_own(&channel.id) && channel.state == "Ringing" =>
            {
                self.ringing = true;
            }
            Event::ChannelVarset {
                channel: Some(ch),
                variable,
                value,
            } if self.is_own(&ch.id) && variable == "CHANLOCALSTATUS" => {
                self.chanlocalstatus = Some(value.clone());
            }
            Event::StasisStart { channel, .. } if self.is_own(&channel.id) => {
                self.answered = true;
                self.in_stasis = true;
            }
            Event::StasisEnd { channel } if self.is_own(&channel.id) => self.in_stasis = false,
            Event::ChannelHangupRequest {
                channel,
                soft: Some(true),
                cause,
            } if *cause == AST_SOFTHANGUP_SHUTDOWN
                && (self.is_own(&channel.id) || self.is_other(&channel.id)) =>
            {
                self.torn_down_by_asterisk = true;
            }
            Event::ChannelHangupRequest { channel, soft, .. }
                if soft != &Some(true)
                    && (self.is_own(&channel.id) || self.is_other(&channel.id)) =>
            {
                self.hangup_requested = true;
            }
            Event::ChannelDestroyed { channel, cause, .. } if self.is_own(&channel.id) => {
                self.own_cause = Some(*cause);
                self.own_destroyed = true;
            }
            Event::ChannelDestroyed { channel, cause, .. } if self.is_other(&channel.id) => {
                self.other_cause = Some(*cause);
                self.other_destroyed = true;
            }
            // A reminder heard to its end stays heard, whatever plays after
            // (the menu, a repeat the callee hangs up on).
            Event::PlaybackStarted { playback }
                if self.prompt != Prompt::Done
                    && self.counted.counts(&playback.id)
                    && playback.target_uri == format!("channel:{}", self.channel) =>
            {
                self.prompt = Prompt::Playing;
            }
            Event::PlaybackFinished { playback }
                if self.prompt != Prompt::Done
                    && self.counted.counts(&playback.id)
                    && playback.target_uri == format!("channel:{}", self.channel) =>
            {
                self.prompt = if playback.state == "done" {
                    Prompt::Done
                } else {
                    Prompt::Failed {
                        hangup_seen: self.hangup_requested || !self.in_stasis,
                    }
                };
            }
            _ => {}
        }
    }

    /// The cause worth logging: the most specific one we saw.
    pub fn cause(&self) -> Option<i64> {
        [self.other_cause, self.own_cause]
            .into_iter()
            .flatten()
            .find(|c| *c != 0 && *c != 16)
            .or(self.own_cause)
    }
}

/// The flag Asterisk puts in a soft hang-up's `cause` when it shuts down
/// (`AST_SOFTHANGUP_SHUTDOWN`; our DELETE shows 32, `..._EXPLICIT`).
const AST_SOFTHANGUP_SHUTDOWN: i64 = 4;

/// What a Q.850 cause says about an unanswered call; `None` for causes
/// that carry no information here (0, 16).
pub fn cause_outcome(cause: i64) -> Option<Outcome> {
    match cause {
        0 | 16 => None,
        17 => Some(Outcome::Busy),
        18 | 19 => Some(Outcome::NoAnswer),
        21 => Some(Outcome::Rejected),
        34 | 38 | 41 | 42 => Some(Outcome::Congestion),
        1 | 3 | 22 | 28 => Some(Outcome::InvalidNumber),
        _ => Some(Outcome::Failed),
    }
}

/// The outcome of a call that ended on its own (our timeouts and aborts
/// are decided by the caller, who knows it hung up).
pub fn classify(e: &Evidence) -> Outcome {
    if e.torn_down_by_asterisk && !(e.answered && e.prompt == Prompt::Done) {
        // Shutdown or restart: whatever the causes say (0), nobody hung up.
        return Outcome::Aborted;
    }
    if e.answered {
        return match e.prompt {
            Prompt::Done => Outcome::Completed,
            // The callee left before or during the prompt.
            Prompt::NotStarted | Prompt::Playing | Prompt::Failed { hangup_seen: true } => {
                Outcome::HungUpEarly
            }
            // The sound is missing: not a delivered reminder.
            Prompt::Failed { hangup_seen: false } => Outcome::Failed,
        };
    }
    let status = |s: &Option<String>| match s.as_deref() {
        Some("BUSY") => Some(Outcome::Busy),
        Some("CONGESTION") => Some(Outcome::Congestion),
        _ => None,
    };
    if let Some(o) = status(&e.last_dialstatus).or_else(|| status(&e.chanlocalstatus)) {
        return o;
    }
    if let Some(o) = [e.other_cause, e.own_cause]
        .into_iter()
        .flatten()
        .find_map(cause_outcome)
    {
        return o;
    }
    match e.last_dialstatus.as_deref() {
        // Ring timeout: cause 19 and no final Dial, or a NOANSWER with nothing better.
        Some("RINGING" | "NOANSWER" | "CANCEL") => Outcome::NoAnswer,
        _ => Outcome::Failed,
    }
}

/// What the daemon did or saw besides the call's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Daemon {
    /// We hung up: shutdown, or the pass's global timeout.
    pub aborted: bool,
    /// Our per-call timeout fired and we hung up.
    pub timed_out: bool,
    /// The prompt could not be played (`play` refused, or the sound is
    /// missing while the channel stays up), and why.
    pub prompt_problem: Option<String>,
    /// The channel vanished unseen while the event socket was down.
    pub lost: Option<Lost>,
    /// How much of the prompt the callee heard.
    pub heard: Option<std::time::Duration>,
}

/// A channel found gone after the event socket came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Asterisk is the same: the call ended while nobody watched.
    Unseen,
    /// Asterisk restarted meanwhile (a new `startup_time`): the restart cut it.
    InRestart,
}

/// The decision: the outcome, what the call log's `detail` says, and
/// whether the trunk is to blame (congestion before ringing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub trunk_congested: bool,
}

/// The whole outcome decision of a call Asterisk placed (README "A pass"):
/// the events (`classify`) unless the daemon's own doings say more.
pub fn decide(ev: &Evidence, d: &Daemon) -> Decided {
    let mut detail = None;
    let outcome = if ev.answered && ev.prompt == Prompt::Done {
        // Heard to the end: whatever cut the call afterwards (our shutdown,
        // a timeout, a lost socket) does not take that back.
        Outcome::Completed
    } else if let Some(lost) = d.lost {
        if lost == Lost::InRestart {
            detail = Some(
                "Asterisk restarted while the ARI event socket was down: the call was cut by the restart"
                    .into(),
            );
            Outcome::Aborted
        } else {
            detail =
                Some("the call ended while the ARI event socket was down: outcome unknown".into());
            Outcome::Failed
        }
    } else if d.aborted {
        Outcome::Aborted
    } else if d.timed_out {
        Outcome::Timeout
    } else if let Some(problem) = &d.prompt_problem {
        detail = Some(problem.clone());
        Outcome::Failed
    } else {
        classify(ev)
    };
    if outcome == Outcome::Aborted && detail.is_none() && ev.torn_down_by_asterisk {
        detail = Some("Asterisk hung the call up itself (shutdown or restart)".into());
    }
    if outcome == Outcome::Failed && detail.is_none() {
        detail = Some(format!(
            "dialstatus {:?}, causes {:?}/{:?}",
            ev.last_dialstatus, ev.own_cause, ev.other_cause
        ));
    }
    if outcome == Outcome::HungUpEarly {
        let secs = d.heard.map_or(0, |h| h.as_secs());
        detail = Some(format!("heard {secs} s of the prompt"));
    }
    Decided {
        outcome,
        detail,
        trunk_congested: !d.aborted && !d.timed_out && congested_before_ringing(ev, outcome),
    }
}

/// An attempt Asterisk never placed: every trunk refused it again and
/// again (`last_refusal`), or the pass ended first. No attempt is spent.
pub fn not_placed(last_refusal: Option<&str>, pass_ended: bool) -> (Outcome, String) {
    match last_refusal {
        Some(r) if !pass_ended => (Outcome::TrunkError, format!("every trunk refused: {r}")),
        _ => (
            Outcome::Aborted,
            "pass ended before a trunk was free".to_owned(),
        ),
    }
}

/// Congestion that struck before the phone rang is the trunk's fault
/// (README "A pass"): the attempt moves to the next trunk instead of being spent.
pub fn congested_before_ringing(e: &Evidence, outcome: Outcome) -> bool {
    outcome == Outcome::Congestion && !e.ringing && !e.answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ari::events::decode;

    /// Replays a recorded scenario from the fixtures into the evidence of
    /// the originated channel (the `;1` of the first Dial event).
    fn replay(scenario: &str, nth_call: usize) -> Evidence {
        let text = include_str!("../../tests/fixtures/ari/events.jsonl");
        let events: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["scenario"] == scenario)
            .map(|r| decode(&r["event"].to_string()).unwrap().event)
            .collect();
        let mut ours = Vec::new();
        for e in &events {
            if let Event::Dial {
                peer, caller: None, ..
            } = e
            {
                if peer.name.ends_with(";1") && !ours.contains(&peer.id) {
                    ours.push(peer.id.clone());
                }
            }
        }
        let own = ours[nth_call].clone();
        let other = events
            .iter()
            .filter_map(Event::channel)
            .find(|c| {
                c.name.ends_with(";2")
                    && c.name.trim_end_matches(";2")
                        == events
                            .iter()
                            .filter_map(Event::channel)
                            .find(|o| o.id == own)
                            .unwrap()
                            .name
                            .trim_end_matches(";1")
            })
            .map(|c| c.id.clone());
        // The lab let Asterisk pick ids; rename the ;2 half as if we had set channelId.
        let mut ev = Evidence::new(own.clone());
        for e in events {
            let json = serde_json::to_string(&e).unwrap();
            let json = match &other {
                Some(o) if o != &format!("{own};2") => {
                    json.replace(&format!("\"{o}\""), &format!("\"{own};2\""))
                }
                _ => json,
            };
            ev.observe(&serde_json::from_str(&json).unwrap());
        }
        ev
    }

    #[test]
    fn recorded_scenarios_classify_as_the_spec_says() {
        let cases = [
            ("answer", 0, Outcome::Completed),
            ("dialplan", 0, Outcome::Completed),
            ("busy", 0, Outcome::Busy),
            ("fv-busy", 0, Outcome::Busy),
            ("noanswer", 0, Outcome::NoAnswer),
            ("fv-noanswer", 0, Outcome::NoAnswer),
            ("congestion", 0, Outcome::Congestion),
            ("fv-congestion", 0, Outcome::Congestion),
            ("unallocated", 0, Outcome::InvalidNumber),
            ("fv-unallocated", 0, Outcome::InvalidNumber),
            ("short", 0, Outcome::HungUpEarly),
            ("fv-short", 0, Outcome::HungUpEarly),
            ("channelid", 0, Outcome::Busy),
            // `core stop now` 2 s into the prompt: cause 0 on both halves
            // and a failed playback, but nobody hung up.
            ("shutdown-mid-prompt", 0, Outcome::Aborted),
            // `core stop gracefully` lets the call finish.
            ("shutdown-graceful-mid-prompt", 0, Outcome::Completed),
        ];
        for (scenario, nth, want) in cases {
            let ev = replay(scenario, nth);
            assert!(ev.own_destroyed, "{scenario}");
            assert_eq!(classify(&ev), want, "{scenario}: {ev:#?}");
        }
        assert!(congested_before_ringing(
            &replay("congestion", 0),
            Outcome::Congestion
        ));
        assert_eq!(replay("busy", 0).cause(), Some(17));
        assert_eq!(replay("noanswer", 0).cause(), Some(19));
    }

    fn direct(own_cause: i64, last: Option<&str>) -> Evidence {
        Evidence {
            channel: "c".into(),
            own_cause: Some(own_cause),
            own_destroyed: true,
            last_dialstatus: last.map(str::to_owned),
            ..Evidence::default()
        }
    }

    #[test]
    fn direct_endpoints_use_their_own_q850_cause() {
        assert_eq!(classify(&direct(17, None)), Outcome::Busy);
        assert_eq!(classify(&direct(19, Some("RINGING"))), Outcome::NoAnswer);
        assert_eq!(classify(&direct(18, None)), Outcome::NoAnswer);
        assert_eq!(
            classify(&direct(21, Some("CHANUNAVAIL"))),
            Outcome::Rejected
        );
        for c in [34, 38, 41, 42] {
            assert_eq!(classify(&direct(c, None)), Outcome::Congestion, "{c}");
        }
        for c in [1, 3, 22, 28] {
            assert_eq!(classify(&direct(c, None)), Outcome::InvalidNumber, "{c}");
        }
        assert_eq!(
            classify(&direct(0, None)),
            Outcome::Failed,
            "cause 0 says nothing"
        );
        assert_eq!(classify(&direct(127, None)), Outcome::Failed);
    }

    #[test]
    fn prompts() {
        let answered = |prompt| Evidence {
            answered: true,
            prompt,
            ..direct(16, Some("ANSWER"))
        };
        assert_eq!(classify(&answered(Prompt::Done)), Outcome::Completed);
        assert_eq!(
            classify(&answered(Prompt::Failed { hangup_seen: true })),
            Outcome::HungUpEarly
        );
        assert_eq!(
            classify(&answered(Prompt::Failed { hangup_seen: false })),
            Outcome::Failed
        );
        assert_eq!(
            classify(&answered(Prompt::NotStarted)),
            Outcome::HungUpEarly
        );
    }

    /// Every branch of the whole decision, on top of the recorded events.
    #[test]
    fn what_the_daemon_did_comes_first() {
        let up = |prompt| Evidence {
            answered: true,
            prompt,
            ..direct(16, Some("ANSWER"))
        };
        let lost = |l| Daemon {
            lost: Some(l),
            ..Daemon::default()
        };
        let o = |ev: &Evidence, d: &Daemon| decide(ev, d).outcome;
        assert_eq!(
            o(&up(Prompt::Done), &lost(Lost::Unseen)),
            Outcome::Completed
        );
        assert_eq!(
            o(&up(Prompt::Playing), &lost(Lost::InRestart)),
            Outcome::Aborted
        );
        let unseen = decide(&up(Prompt::Playing), &lost(Lost::Unseen));
        assert_eq!(unseen.outcome, Outcome::Failed);
        assert!(unseen.detail.unwrap().contains("outcome unknown"));
        let aborted = Daemon {
            aborted: true,
            ..Daemon::default()
        };
        assert_eq!(o(&up(Prompt::Playing), &aborted), Outcome::Aborted);
        assert_eq!(
            o(&up(Prompt::Done), &aborted),
            Outcome::Completed,
            "a shutdown after the whole prompt was heard"
        );
        let timed_out = Daemon {
            timed_out: true,
            ..Daemon::default()
        };
        assert_eq!(o(&direct(0, Some("RINGING")), &timed_out), Outcome::Timeout);
        let missing = decide(
            &up(Prompt::Failed { hangup_seen: false }),
            &Daemon {
                prompt_problem: Some("prompt failed at sound:x".into()),
                ..Daemon::default()
            },
        );
        assert_eq!(
            (missing.outcome, missing.detail.as_deref()),
            (Outcome::Failed, Some("prompt failed at sound:x"))
        );
        let torn = decide(
            &Evidence {
                torn_down_by_asterisk: true,
                ..up(Prompt::Playing)
            },
            &Daemon::default(),
        );
        assert_eq!(torn.outcome, Outcome::Aborted);
        assert!(torn.detail.unwrap().contains("Asterisk hung the call up"));
        let early = decide(
            &up(Prompt::Failed { hangup_seen: true }),
            &Daemon {
                heard: Some(std::time::Duration::from_millis(3900)),
                ..Daemon::default()
            },
        );
        assert_eq!(
            (early.outcome, early.detail.as_deref()),
            (Outcome::HungUpEarly, Some("heard 3 s of the prompt"))
        );
        let unknown = decide(&direct(0, None), &Daemon::default());
        assert!(unknown.detail.unwrap().contains("causes"));
        let congested = replay("congestion", 0);
        assert!(decide(&congested, &Daemon::default()).trunk_congested);
        assert!(!decide(&congested, &aborted).trunk_congested, "we hung up");
    }

    #[test]
    fn attempts_never_placed() {
        assert_eq!(
            not_placed(Some("HTTP 500: Allocation failed"), false).0,
            Outcome::TrunkError
        );
        assert_eq!(not_placed(Some("HTTP 500"), true).0, Outcome::Aborted);
        assert_eq!(not_placed(None, false).0, Outcome::Aborted);
    }
}
