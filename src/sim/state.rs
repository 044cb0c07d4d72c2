//! The simulator's shared state: live channels and bridges, which app is
//! registered on which WebSocket, and the one place events are emitted.
//!
//! Everything sits behind one mutex held only for short, non-async
//! sections. Emitting under the lock keeps every connection's events in
//! the order they happened, as Asterisk does. The media of externalMedia
//! channels lives here too, so a channel's socket goes with the channel.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::media::{Heard, Said, Stream};
use super::Played;
use crate::ari::model::{Bridge, CallerId, Channel, DialplanCep};

/// Commands from the REST side to the task that plays a call.
#[derive(Debug)]
pub enum Ctl {
    /// `DELETE /channels/{id}` of `channel` (either half of a Local pair):
    /// hang up with this Q.850 cause.
    Hangup { channel: String, cause: i64 },
    /// The other party of `channel` hangs up: the callee of an answered
    /// outbound call, the caller of an inbound one (`Simulator::hang_up_caller`).
    FarEndHangup,
    /// `POST /channels/{id}/play` on `channel`: the task emits
    /// `PlaybackStarted` (if nothing plays yet), then acks.
    Play {
        channel: String,
        playback_id: String,
        media: Vec<String>,
        lang: String,
        ack: oneshot::Sender<()>,
    },
    /// `DELETE /playbacks/{id}`: acks whether the playback was still
    /// playing or queued (then it is stopped).
    StopPlayback {
        playback_id: String,
        ack: oneshot::Sender<bool>,
    },
    /// `core stop now`: tear the call down at once, whatever its state.
    Shutdown,
    /// `POST /channels/{id}/continue` on `channel`, in Stasis: it leaves
    /// Stasis for `target` once its playbacks have ended (they run before
    /// the continue in Asterisk's command queue), then acks.
    Continue {
        channel: String,
        target: Target,
        ack: oneshot::Sender<()>,
    },
}

/// Where `continue` sends a channel in the dialplan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub context: String,
    pub exten: String,
    pub priority: i64,
}

/// What the WebSocket writer of one connection is told.
#[derive(Debug)]
pub enum WsOut {
    Text(String),
    /// A close frame, with this status code if any.
    Close(Option<u16>),
    /// The socket is dropped with no close frame, as when Asterisk's
    /// process exits (`core stop now`): the client sees end of stream.
    Cut,
}

pub struct Chan {
    pub ch: Channel,
    /// Apps receiving this channel's events.
    pub subscribers: Vec<String>,
    /// The app whose Stasis the channel is in.
    pub stasis: Option<String>,
    /// The dialplan location shown once the channel leaves Stasis.
    pub home: DialplanCep,
    pub ctl: Option<mpsc::UnboundedSender<Ctl>>,
    /// The `;1` (or only) channel of an originate: one call.
    pub is_call: bool,
    /// Entered Stasis from the dialplan (an inbound call): its app stops
    /// following it when it leaves Stasis. Channels created through ARI
    /// stay followed to the end.
    pub via_dialplan: bool,
    /// An app that follows the channel only because a `continue` sent it
    /// into that app's `Stasis()` (`stasis_contexts`, or back from `AMD()`
    /// for a channel its app did not follow): it stops following at
    /// `StasisEnd`, as an inbound channel's app does.
    pub hopped_into: Option<String>,
}

/// One REST request as received, for tests that count what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub at: Instant,
}

#[derive(Default)]
pub struct Inner {
    pub channels: HashMap<String, Chan>,
    pub bridges: HashMap<String, Bridge>,
    /// Apps whose channels have been in each bridge: they hear of its end.
    pub bridge_apps: HashMap<String, Vec<String>>,
    pub apps: HashMap<String, u64>,
    pub conns: HashMap<u64, mpsc::UnboundedSender<WsOut>>,
    pub next_conn: u64,
    pub seq: u64,
    pub requests: Vec<Request>,
    pub live_calls: usize,
    pub peak_calls: usize,
    /// (when, live calls) at every change, for utilisation figures.
    pub live_log: Vec<(Instant, usize)>,
    /// (channel, when) of every StasisStart, for latency figures.
    pub stasis_log: Vec<(String, Instant)>,
    /// Playbacks into bridges still playing, by playback id: a shutdown
    /// ends them as `failed`, and their timers then find nothing to finish.
    pub bridge_playbacks: HashMap<String, BridgePlayback>,
    /// `core stop …` was given: no new channel can be allocated.
    pub stopping: bool,
    /// Channel playbacks queued or playing, by playback id: the channel
    /// they play on, for `DELETE /playbacks/{id}`.
    pub playbacks: HashMap<String, String>,
    /// The RTP socket of every live externalMedia channel, by channel id.
    pub media: HashMap<String, Stream>,
    /// The clock that paces RTP is running.
    pub media_clock: bool,
    /// μ-law each caller has still to say, by channel id.
    pub speech: HashMap<String, VecDeque<u8>>,
    /// What each caller heard from externalMedia, by channel id; kept
    /// after the caller is gone.
    pub heard: HashMap<String, Vec<Heard>>,
    /// When each packet of each caller's speech was sent, by channel id;
    /// kept after the caller is gone.
    pub said: HashMap<String, Vec<Said>>,
    /// Datagrams on externalMedia sockets that were not RTP.
    pub bad_rtp: usize,
    /// Where each channel went with `continue`, by channel id; kept after
    /// the channel is gone.
    pub continued: HashMap<String, Target>,
    /// What was played to each channel, by channel id; kept after the
    /// channel is gone.
    pub played: HashMap<String, Vec<Played>>,
    /// Endpoints by `Tech/resource`, with their state (`online` …).
    pub endpoints: HashMap<String, String>,
    /// The apps subscribed to each endpoint's events.
    pub endpoint_subs: HashMap<String, Vec<String>>,
}

pub struct BridgePlayback {
    pub playback: Value,
    pub apps: Vec<String>,
}

pub fn now_stamp() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

pub fn cause_txt(cause: i64) -> &'static str {
    match cause {
        1 => "Unallocated (unassigned) number",
        16 => "Normal Clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "User alerting, no answer",
        21 => "Call Rejected",
        34 => "Circuit/channel congestion",
        38 => "Network out of order",
        41 => "Temporary failure",
        42 => "Switching equipment congestion",
        127 => "Interworking, unspecified",
        _ => "Unknown",
    }
}

/// A fresh channel as Asterisk shows it right after creation.
pub fn new_channel(
    id: String,
    name: String,
    state: &str,
    dialplan: DialplanCep,
    caller: CallerId,
) -> Channel {
    Channel {
        id,
        name,
        state: state.to_owned(),
        protocol_id: String::new(),
        connected: caller.clone(),
        caller,
        accountcode: String::new(),
        dialplan,
        creationtime: now_stamp(),
        language: "en".into(),
        channelvars: None,
    }
}

impl Inner {
    /// Asterisk-style unique id (`<epoch>.<n>`).
    pub fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{}.{}", Utc::now().timestamp(), self.seq)
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn send(&self, app: &str, mut ev: Value, asterisk_id: &str) {
        let Some(conn) = self.apps.get(app).and_then(|c| self.conns.get(c)) else {
            return; // nobody registered: Asterisk drops it too
        };
        if let Value::Object(map) = &mut ev {
            map.insert("asterisk_id".into(), Value::from(asterisk_id));
            map.insert("application".into(), Value::from(app));
        }
        let _ = conn.send(WsOut::Text(ev.to_string()));
    }

    /// Sends `ev` to every app subscribed to `channel`.
    pub fn emit_channel(&self, channel: &str, ev: Value, asterisk_id: &str) {
        if let Some(c) = self.channels.get(channel) {
            for app in &c.subscribers {
                self.send(app, ev.clone(), asterisk_id);
            }
        }
    }

    pub fn emit_app(&self, app: &str, ev: Value, asterisk_id: &str) {
        self.send(app, ev, asterisk_id);
    }

    pub fn snapshot(&self, channel: &str) -> Option<Value> {
        self.channels
            .get(channel)
            .and_then(|c| serde_json::to_value(&c.ch).ok())
    }

    pub fn add_channel(&mut self, chan: Chan) {
        if chan.is_call {
            self.live_calls += 1;
            self.peak_calls = self.peak_calls.max(self.live_calls);
            self.live_log.push((Instant::now(), self.live_calls));
        }
        self.channels.insert(chan.ch.id.clone(), chan);
    }

    pub fn remove_channel(&mut self, id: &str) -> Option<Chan> {
        let chan = self.channels.remove(id)?;
        if chan.is_call {
            self.live_calls -= 1;
            self.live_log.push((Instant::now(), self.live_calls));
        }
        for b in self.bridges.values_mut() {
            b.channels.retain(|c| c != id);
        }
        // Queued playbacks of a channel that is gone never start.
        self.playbacks.retain(|_, ch| ch != id);
        // Its socket closes; what it had still to say is never said.
        self.media.remove(id);
        self.speech.remove(id);
        // The hang-up ends what it was hearing.
        self.played_end(id, false);
        Some(chan)
    }

    /// A media item starts playing to `channel`.
    pub fn played_start(&mut self, channel: &str, media: &str, lang: &str) {
        self.played
            .entry(channel.to_owned())
            .or_default()
            .push(Played {
                media: media.to_owned(),
                lang: Some(lang.to_owned()),
                started: Instant::now(),
                ended: None,
                stopped: false,
            });
    }

    /// What plays to `channel` ends; `stopped` when a `DELETE` cut it.
    pub fn played_end(&mut self, channel: &str, stopped: bool) {
        // One channel plays one item at a time: the open one is the last.
        if let Some(p) = self
            .played
            .get_mut(channel)
            .and_then(|v| v.last_mut())
            .filter(|p| p.ended.is_none())
        {
            p.ended = Some(Instant::now());
            p.stopped = stopped;
        }
    }

    /// The other half of a Local pair (`…;1` ↔ `…;2`), if it is alive.
    pub fn local_partner(&self, id: &str) -> Option<String> {
        let name = &self.channels.get(id)?.ch.name;
        let other = if let Some(base) = name.strip_suffix(";1") {
            format!("{base};2")
        } else {
            format!("{};1", name.strip_suffix(";2")?)
        };
        self.channels
            .iter()
            .find(|(_, c)| c.ch.name == other)
            .map(|(id, _)| id.clone())
    }
}

impl Inner {
    fn channel_name(&self, id: &str) -> String {
        self.channels
            .get(id)
            .map(|c| c.ch.name.clone())
            .unwrap_or_default()
    }
}

/// Event builders: each takes the lock's contents, changes the channel as
/// the event says, and emits it.
pub struct Emit<'a> {
    pub inner: &'a mut Inner,
    pub asterisk_id: &'a str,
}

impl Emit<'_> {
    fn base(kind: &str) -> Value {
        json!({ "type": kind, "timestamp": now_stamp() })
    }

    fn with(mut ev: Value, fields: Value) -> Value {
        if let (Value::Object(a), Value::Object(b)) = (&mut ev, fields) {
            a.extend(b);
        }
        ev
    }

    fn channel_event(&mut self, id: &str, kind: &str, fields: Value) {
        let Some(snap) = self.inner.snapshot(id) else {
            return;
        };
        let ev = Self::with(
            Self::with(Self::base(kind), fields),
            json!({ "channel": snap }),
        );
        self.inner.emit_channel(id, ev, self.asterisk_id);
    }

    pub fn dial(&mut self, id: &str, dialstatus: &str, dialstring: &str) {
        let Some(snap) = self.inner.snapshot(id) else {
            return;
        };
        let ev = Self::with(
            Self::base("Dial"),
            json!({ "dialstatus": dialstatus, "forward": "", "dialstring": dialstring, "peer": snap }),
        );
        self.inner.emit_channel(id, ev, self.asterisk_id);
    }

    /// A `Dial()` from `caller`'s dialplan to a channel no app is subscribed to.
    pub fn dial_from(&mut self, caller: &str, peer: &Channel, dialstatus: &str, dialstring: &str) {
        let Some(snap) = self.inner.snapshot(caller) else {
            return;
        };
        let ev = Self::with(
            Self::base("Dial"),
            json!({ "dialstatus": dialstatus, "forward": "", "dialstring": dialstring, "caller": snap, "peer": peer }),
        );
        self.inner.emit_channel(caller, ev, self.asterisk_id);
    }

    pub fn dialplan(&mut self, id: &str, app: &str, data: &str) {
        if let Some(c) = self.inner.channels.get_mut(id) {
            c.ch.dialplan.priority += 1;
            c.ch.dialplan.app_name = app.to_owned();
            c.ch.dialplan.app_data = data.to_owned();
        }
        self.channel_event(
            id,
            "ChannelDialplan",
            json!({ "dialplan_app": app, "dialplan_app_data": data }),
        );
    }

    pub fn state(&mut self, id: &str, state: &str) {
        if let Some(c) = self.inner.channels.get_mut(id) {
            c.ch.state = state.to_owned();
        }
        self.channel_event(id, "ChannelStateChange", json!({}));
    }

    pub fn varset(&mut self, id: &str, variable: &str, value: &str) {
        self.channel_event(
            id,
            "ChannelVarset",
            json!({ "variable": variable, "value": value }),
        );
    }

    pub fn hangup_request(&mut self, id: &str, cause: i64, soft: bool) {
        let fields = if soft {
            json!({ "cause": cause, "soft": true })
        } else {
            json!({ "cause": cause })
        };
        self.channel_event(id, "ChannelHangupRequest", fields);
    }

    pub fn destroyed(&mut self, id: &str, cause: i64) {
        // Out of Stasis, the snapshot shows the application the channel was
        // created with, at the place the dialplan had reached (recordings
        // `callee-dtmf`, `inbound-caller-hangs-up-with-externalmedia`).
        if let Some(c) = self.inner.channels.get_mut(id) {
            if c.stasis.is_none() {
                c.ch.dialplan.app_name = c.home.app_name.clone();
                c.ch.dialplan.app_data = c.home.app_data.clone();
            }
        }
        self.channel_event(
            id,
            "ChannelDestroyed",
            json!({ "cause": cause, "cause_txt": cause_txt(cause) }),
        );
        self.inner.remove_channel(id);
    }

    /// `ChannelDestroyed`, then a `ChannelCallerId` showing `caller`: the
    /// order `chan_local` sent them for a `;1` whose `;2` had taken a new
    /// connected line in a bridge (recording
    /// `inbound-caller-hangs-up-with-externalmedia`).
    pub fn destroyed_then_caller_id(&mut self, id: &str, cause: i64, caller: CallerId) {
        let Some(c) = self.inner.channels.get_mut(id) else {
            return;
        };
        c.ch.caller = caller;
        if c.stasis.is_none() {
            c.ch.dialplan.app_name = c.home.app_name.clone();
            c.ch.dialplan.app_data = c.home.app_data.clone();
        }
        let subscribers = c.subscribers.clone();
        let snap = self.inner.snapshot(id);
        self.destroyed(id, cause);
        let Some(snap) = snap else {
            return;
        };
        let ev = Self::with(
            Self::with(
                Self::base("ChannelCallerId"),
                json!({ "caller_presentation": 0, "caller_presentation_txt": "Presentation Allowed, Not Screened" }),
            ),
            json!({ "channel": snap }),
        );
        for app in &subscribers {
            self.inner.emit_app(app, ev.clone(), self.asterisk_id);
        }
    }

    pub fn caller_id(&mut self, id: &str) {
        self.channel_event(id, "ChannelCallerId", json!({ "caller_presentation": 0, "caller_presentation_txt": "Presentation Allowed, Not Screened" }));
    }

    pub fn connected_line(&mut self, id: &str) {
        self.channel_event(id, "ChannelConnectedLine", json!({}));
    }

    /// The far end sent DTMF: `ChannelDtmfReceived` once the digit ends
    /// (fact 15), to every app following the channel.
    pub fn dtmf(&mut self, id: &str, digit: char) {
        self.channel_event(
            id,
            "ChannelDtmfReceived",
            json!({ "digit": digit.to_string(), "duration_ms": 100 }),
        );
    }

    /// Enters Stasis of `app`. `false` when the app is not registered: the
    /// real `Stasis()` then fails and the channel is hung up.
    pub fn stasis_start(&mut self, id: &str, app: &str, args: &[String]) -> bool {
        if !self.inner.apps.contains_key(app) {
            return false;
        }
        let Some(c) = self.inner.channels.get_mut(id) else {
            return false;
        };
        c.stasis = Some(app.to_owned());
        c.ch.dialplan.app_name = "Stasis".into();
        // `Stasis(app,args…)`: externalMedia's `data` shows here (fact 19).
        c.ch.dialplan.app_data = std::iter::once(app)
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(",");
        let Some(snap) = self.inner.snapshot(id) else {
            return false;
        };
        self.inner.stasis_log.push((id.to_owned(), Instant::now()));
        let ev = Self::with(
            Self::base("StasisStart"),
            json!({ "args": args, "channel": snap }),
        );
        self.inner.emit_app(app, ev, self.asterisk_id);
        true
    }

    /// `app` starts receiving every event of the channel. Originated
    /// channels are subscribed from birth; a channel entering `Stasis()`
    /// from the dialplan is followed only from then on.
    pub fn subscribe(&mut self, id: &str, app: &str) {
        if let Some(c) = self.inner.channels.get_mut(id) {
            if !c.subscribers.iter().any(|s| s == app) {
                c.subscribers.push(app.to_owned());
            }
        }
    }

    /// Leaves Stasis; an app that only followed the channel because of
    /// `Stasis()` stops receiving its events.
    pub fn stasis_end(&mut self, id: &str, unsubscribe: bool) {
        let Some(app) = self
            .inner
            .channels
            .get_mut(id)
            .and_then(|c| c.stasis.take())
        else {
            return;
        };
        let Some(snap) = self.inner.snapshot(id) else {
            return;
        };
        let ev = Self::with(Self::base("StasisEnd"), json!({ "channel": snap }));
        self.inner.emit_app(&app, ev, self.asterisk_id);
        if let Some(c) = self.inner.channels.get_mut(id) {
            let hopped = c.hopped_into.as_deref() == Some(app.as_str());
            if unsubscribe || hopped {
                c.subscribers.retain(|s| *s != app);
                c.hopped_into = None;
            }
        }
    }

    /// `PlaybackStarted` / `PlaybackContinuing` / `PlaybackFinished` to the
    /// channel's Stasis app. A finished playback can no longer be stopped.
    pub fn playback(&mut self, channel: &str, kind: &str, playback: Value) {
        if kind == "PlaybackFinished" {
            if let Some(id) = playback["id"].as_str() {
                self.inner.playbacks.remove(id);
            }
        }
        let Some(app) = self
            .inner
            .channels
            .get(channel)
            .and_then(|c| c.stasis.clone())
        else {
            return;
        };
        let ev = Self::with(Self::base(kind), json!({ "playback": playback }));
        self.inner.emit_app(&app, ev, self.asterisk_id);
    }

    pub fn bridge_event(&mut self, kind: &str, bridge: &Bridge, channel: Option<&str>, app: &str) {
        let mut fields = json!({ "bridge": bridge });
        if let Some(id) = channel {
            let Some(snap) = self.inner.snapshot(id) else {
                return;
            };
            fields["channel"] = snap;
        }
        let ev = Self::with(Self::base(kind), fields);
        self.inner.emit_app(app, ev, self.asterisk_id);
    }
}

impl Emit<'_> {
    /// `ChannelLeftBridge` for every bridge holding the channel (before it leaves Stasis).
    pub fn leave_bridges(&mut self, id: &str) {
        let Some(app) = self.inner.channels.get(id).and_then(|c| c.stasis.clone()) else {
            return;
        };
        let holding: Vec<Bridge> = self
            .inner
            .bridges
            .values()
            .filter(|b| b.channels.iter().any(|c| c == id))
            .cloned()
            .collect();
        for mut bridge in holding {
            self.varset(id, "BRIDGEPEER", "");
            bridge.channels.retain(|c| c != id);
            if let Some(b) = self.inner.bridges.get_mut(&bridge.id) {
                b.channels.retain(|c| c != id);
            }
            self.bridge_event("ChannelLeftBridge", &bridge, Some(id), &app);
        }
    }
}

impl Emit<'_> {
    /// Sets `BRIDGEPEER` on every channel of the bridge to the names of the
    /// others (joined in order), with `extra` (an announcer) first.
    pub fn bridge_peers(&mut self, bridge: &Bridge, extra: Option<&str>) {
        if bridge.channels.len() < 2 {
            return;
        }
        for id in &bridge.channels {
            let mut peers: Vec<String> = extra.map(str::to_owned).into_iter().collect();
            peers.extend(
                bridge
                    .channels
                    .iter()
                    .filter(|c| *c != id)
                    .map(|c| self.inner.channel_name(c)),
            );
            self.varset(id, "BRIDGEPEER", &peers.join(","));
        }
    }
}

impl Emit<'_> {
    /// A two-party bridge swaps connected lines: `joined` and the channel
    /// already there each take the other's caller id, with a
    /// `ChannelConnectedLine` where it changed, `joined` first (recording
    /// `inbound-caller-hangs-up-with-externalmedia`; none in `externalmedia`,
    /// where both caller ids were empty).
    pub fn bridge_connected_lines(&mut self, bridge: &Bridge, joined: &str) {
        let [x, y] = bridge.channels.as_slice() else {
            return;
        };
        let other = if x == joined { y } else { x };
        let caller_of =
            |inner: &Inner, id: &str| inner.channels.get(id).map(|c| c.ch.caller.clone());
        let (Some(joined_caller), Some(other_caller)) =
            (caller_of(self.inner, joined), caller_of(self.inner, other))
        else {
            return;
        };
        for (id, caller) in [(joined, other_caller), (other.as_str(), joined_caller)] {
            let changed = match self.inner.channels.get_mut(id) {
                Some(c) if c.ch.connected != caller => {
                    c.ch.connected = caller;
                    true
                }
                _ => false,
            };
            if changed {
                self.connected_line(id);
            }
        }
    }
}

impl Emit<'_> {
    /// Removes a bridge: its channels leave it, and every app that had a
    /// channel in it gets `BridgeDestroyed`. `false` if there is no such bridge.
    pub fn destroy_bridge(&mut self, id: &str) -> bool {
        let Some(bridge) = self.inner.bridges.get(id).cloned() else {
            return false;
        };
        for ch in &bridge.channels {
            self.leave_bridges(ch);
        }
        self.inner.bridges.remove(id);
        let mut empty = bridge;
        empty.channels.clear();
        for app in self.inner.bridge_apps.remove(id).unwrap_or_default() {
            self.bridge_event("BridgeDestroyed", &empty, None, &app);
        }
        true
    }

    /// Asterisk going down: what still plays into a bridge fails, as a
    /// channel's playback does, and every bridge is destroyed.
    pub fn end_bridges(&mut self) {
        let mut playbacks: Vec<(String, BridgePlayback)> =
            self.inner.bridge_playbacks.drain().collect();
        playbacks.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut bp) in playbacks {
            bp.playback["state"] = Value::from("failed");
            for app in &bp.apps {
                let ev = Self::with(
                    Self::base("PlaybackFinished"),
                    json!({ "playback": bp.playback }),
                );
                self.inner.emit_app(app, ev, self.asterisk_id);
            }
        }
        let mut ids: Vec<String> = self.inner.bridges.keys().cloned().collect();
        ids.sort();
        for id in ids {
            self.destroy_bridge(&id);
        }
    }
}
