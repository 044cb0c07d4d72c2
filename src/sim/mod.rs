//! An in-repo simulator of Asterisk 22's ARI, for tests, the demo and the
//! benchmarks. It serves the same endpoints, JSON and status codes as the
//! recordings in `tests/fixtures/ari/`, registers Stasis apps with the event
//! WebSocket, and plays calls out with the lab's dialplan (`dialplan`) and
//! the recorded event sequences (`call`).
//!
//! Test hooks on `Simulator`: drop every WebSocket; restart (refuse
//! connections for a while and lose every channel); Asterisk's `core stop
//! now` (`stop_now`: calls torn down with cause 0, WebSockets cut without
//! a close frame) and `core stop gracefully` (`stop_gracefully`:
//! originates refused until the calls end, then close frame 1000), both
//! coming back empty after a while; `startup_time`, new after every
//! restart, as `GET /ari/asterisk/info` shows it; refuse originates for a
//! technology with 500 `Allocation failed`; delay responses; per number,
//! answer an originate late (`late_originate_answers`) or never
//! (`lost_originates`), the callee's behaviour, and how long it rings
//! (`answer_delays`); inbound calls, over a trunk (`inbound_call`) or
//! through a Local channel of the PBX's own (`inbound_local_call`), which
//! play like any channel in Stasis; the far end hanging up
//! (`hang_up_caller`); and counters of live channels, bridges and
//! requests. A time scale shrinks every simulated duration so tests run
//! fast.
//!
//! Media and the far end's keys: externalMedia channels carry real RTP on
//! loopback (`media`), so a caller can speak to the daemon (`caller_says`)
//! and a test can read what the caller heard back (`heard`); what was
//! played to any channel, item by item, with when it started and ended and
//! whether a `DELETE` cut it, stays readable after the call (`played`); a
//! party can press a key (`press`, `ChannelDtmfReceived`), and a callee
//! can press keys on its own at set times after the answer (`SimConfig.dtmf`);
//! and where `continue` sent a channel is kept (`continued_to`).
//!
//! Where `continue` can send a channel, besides a queue that holds it:
//! the lab's `agents`; an AMD context (`SimConfig.amd_contexts`) whose
//! `AMD()` brings the same channel back to the app it left with the
//! verdict as its `StasisStart` args (`SimConfig.amd`, per number; the
//! lab's `sim-human`, `sim-notsure` and `sim-machine` callees greet as
//! recorded and get the recorded verdicts); and a context that hands the
//! channel to another Stasis app (`SimConfig.stasis_contexts`, by default
//! `overdue-agent` into `openai-app`, as the outbound call hands a callee
//! to the voice agent). The callee behind the channel keeps its own
//! script meanwhile: it can hang up during `AMD()`, and its keys are lost
//! while the channel is out of Stasis.

mod call;
pub mod dialplan;
mod endpoints;
mod http;
mod media;
mod say;
mod state;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

pub use dialplan::{Callee, Greeting};
pub use media::{Heard, Said};
pub use state::Request;
use state::{Ctl, Emit, Inner, WsOut};

/// What `AMD()` decides for a callee, and how long it takes (fact 17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmdVerdict {
    /// `AMDSTATUS`: `HUMAN`, `MACHINE` or `NOTSURE`.
    pub status: String,
    /// `AMDCAUSE`, e.g. `HUMAN-800-800`.
    pub cause: String,
    /// From `AMD()` starting to the verdict (unscaled; scaled by
    /// `time_scale` like every simulated duration).
    pub after: Duration,
}

impl AmdVerdict {
    /// `amd-human`: real silence after a short greeting, 2.92 s.
    pub fn human() -> AmdVerdict {
        AmdVerdict::new("HUMAN", "HUMAN-800-800", 2920)
    }

    /// `amd-machine`: a long greeting, too many words, 1.66 s.
    pub fn machine() -> AmdVerdict {
        AmdVerdict::new("MACHINE", "MAXWORDS-3-2", 1660)
    }

    /// `amd-notsure`: a greeting then no audio frames at all, 5.01 s.
    pub fn notsure() -> AmdVerdict {
        AmdVerdict::new("NOTSURE", "TOOLONG-4820", 5010)
    }

    fn new(status: &str, cause: &str, ms: u64) -> AmdVerdict {
        AmdVerdict {
            status: status.into(),
            cause: cause.into(),
            after: Duration::from_millis(ms),
        }
    }
}

/// One media item played to a channel (`Simulator::played`): what the
/// party on it heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Played {
    /// One media URI of the play request (`sound:morosos_natalia`,
    /// `number:125000`): a request with several gives one `Played` each.
    pub media: String,
    /// The `lang` it was played in (the channel's language if none was given).
    pub lang: Option<String>,
    pub started: Instant,
    /// When it ended: played out, stopped, or the channel hung up; `None`
    /// while it plays.
    pub ended: Option<Instant>,
    /// Cut short by `DELETE /playbacks/{id}`.
    pub stopped: bool,
}

/// A sound Asterisk has on disk: in which languages, and how long it plays.
#[derive(Debug, Clone)]
pub struct SoundSpec {
    pub languages: Vec<String>,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub username: String,
    pub password: String,
    /// Multiplies every simulated duration (prompts, callee behaviour,
    /// ring timeouts, answer delay): 0.01 runs a 4.38 s prompt in 44 ms.
    pub time_scale: f64,
    /// How long answering callees ring first (unscaled; 0 answers at once, as in the lab).
    pub answer_delay: Duration,
    /// Per number, how long its callee rings before answering, instead of
    /// `answer_delay` (unscaled, like it).
    pub answer_delays: HashMap<String, Duration>,
    /// Lag of the callee's `Wait()` dialplan event after the answer (real time, not scaled).
    pub dialplan_lag: Duration,
    pub sounds: HashMap<String, SoundSpec>,
    /// Per-number callee behaviour, instead of the last-digit table.
    pub callees: HashMap<String, Callee>,
    /// One behaviour for every number not in `callees` (load tests).
    pub every_callee: Option<Callee>,
    /// Technologies whose originates answer 500 `Allocation failed`.
    pub failing_technologies: HashSet<String>,
    /// Added before every REST answer.
    pub response_delay: Duration,
    pub inbound_app: String,
    /// Per number: the call is placed at once, but the answer to its
    /// originate comes only after this long (real time, not scaled): an
    /// originate answered after the client's timeout still rings.
    pub late_originate_answers: HashMap<String, Duration>,
    /// Numbers whose originates never reach Asterisk: the request is
    /// recorded, nothing is placed, and no answer ever comes.
    pub lost_originates: HashSet<String>,
    /// A channel that `continue` sent to a context the lab's dialplan does
    /// not define (anything but `agents`) waits there, as in a queue, until
    /// the far end hangs up, we `DELETE` it, or after this long (unscaled,
    /// like `answer_delay`) the dialplan's `Hangup()` ends it. `None`: it waits.
    pub continue_hangup_after: Option<Duration>,
    /// The later lab's `from-voip` (recording
    /// `inbound-caller-hangs-up-with-externalmedia`): the inbound number runs
    /// `Set(CHANNEL(audioreadformat)=ulaw)` and
    /// `Set(CHANNEL(audiowriteformat)=ulaw)` before `Stasis()`, which it
    /// then reaches at priority 4. Off: straight to `Stasis()` at priority 2
    /// (recording `inbound`, fact 11).
    pub inbound_sets_ulaw: bool,
    /// Per dialled number, what `AMD()` decides and when. A number not
    /// here gets its lab context's verdict if dialled as
    /// `Local/<n>@sim-human|sim-notsure|sim-machine`, else `HUMAN`
    /// `HUMAN-800-800` after 2.92 s.
    pub amd: HashMap<String, AmdVerdict>,
    /// Contexts whose `s` priority 1 runs `AMD()` then
    /// `Stasis(<the app the channel left>,amd,${AMDSTATUS},${AMDCAUSE})`
    /// then `Hangup()`, as the lab's `amd` (fact 17).
    pub amd_contexts: Vec<String>,
    /// Per dialled number, the keys its callee presses: each at a delay
    /// (unscaled) after the call was answered (its first `StasisStart`).
    /// Reported as `press` reports them, on the channel facing the app.
    /// Keys go on across an AMD hop, but one pressed while that channel
    /// runs the dialplan (during `AMD()`, which reads and discards the
    /// frames) is lost to the app: it hears keys only while the channel is
    /// in Stasis, so the daemon must not count on a key pressed during AMD.
    /// No recording shows this case; `press` still reports a key out of
    /// Stasis to the channel's followers.
    pub dtmf: HashMap<String, Vec<(Duration, char)>>,
    /// Contexts that hand a channel to another Stasis app: a `continue` to
    /// one of them (any extension, priority 1) runs `Stasis(<app>,<args>)`,
    /// `${EXTEN}` in the args replaced by the extension.
    pub stasis_contexts: HashMap<String, (String, Vec<String>)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        let mut sounds = HashMap::new();
        sounds.insert(
            "morosos_natalia".to_owned(),
            SoundSpec {
                languages: vec!["es_MX".into()],
                duration: Duration::from_millis(4380),
            },
        );
        // Asterisk's core sound, as the lab's `agents` context plays it.
        sounds.insert(
            "hello-world".to_owned(),
            SoundSpec {
                languages: vec!["en".into()],
                duration: Duration::from_millis(1420),
            },
        );
        // Asterisk's Spanish core sounds a spoken amount or date plays as
        // `sound:` (`rules::media::sounds_needed`), 0.6 s a word.
        let spanish = crate::rules::media::sounds_needed(&[
            "number:{saldo}".to_owned(),
            crate::rules::media::CORTE_FECHA.to_owned(),
        ]);
        for name in spanish {
            sounds.insert(
                name,
                SoundSpec {
                    languages: vec!["es".into(), "es_MX".into()],
                    duration: Duration::from_millis(600),
                },
            );
        }
        SimConfig {
            username: "asterisk".into(),
            password: "asterisk".into(),
            time_scale: 1.0,
            answer_delay: Duration::ZERO,
            answer_delays: HashMap::new(),
            dialplan_lag: Duration::from_millis(5),
            sounds,
            callees: HashMap::new(),
            every_callee: None,
            failing_technologies: HashSet::new(),
            response_delay: Duration::ZERO,
            inbound_app: "openai-app".into(),
            late_originate_answers: HashMap::new(),
            lost_originates: HashSet::new(),
            continue_hangup_after: None,
            inbound_sets_ulaw: false,
            amd: HashMap::new(),
            amd_contexts: vec!["amd".into(), "overdue-amd".into()],
            dtmf: HashMap::new(),
            // How the outbound call hands a callee to the voice agent.
            stasis_contexts: HashMap::from([(
                "overdue-agent".to_owned(),
                (
                    "openai-app".to_owned(),
                    vec!["client".to_owned(), "${EXTEN}".to_owned()],
                ),
            )]),
        }
    }
}

/// State shared by the HTTP handlers and the call tasks.
pub(crate) struct Shared {
    cfg: Mutex<SimConfig>,
    inner: Mutex<Inner>,
    asterisk_id: String,
    /// `status.startup_time` of `GET /asterisk/info`.
    startup: Mutex<DateTime<Utc>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not take the whole simulator down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn cfg(&self) -> MutexGuard<'_, SimConfig> {
        lock(&self.cfg)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Runs `f` with the state locked, emitting events in order.
    fn with<R>(&self, f: impl FnOnce(&mut Emit) -> R) -> R {
        let mut inner = self.inner();
        let mut e = Emit {
            inner: &mut inner,
            asterisk_id: &self.asterisk_id,
        };
        f(&mut e)
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.cfg().time_scale.max(0.0))
    }

    fn startup_stamp(&self) -> String {
        lock(&self.startup)
            .format("%Y-%m-%dT%H:%M:%S%.3f%z")
            .to_string()
    }

    /// A new Asterisk process: a later startup time, even within the same
    /// millisecond, so a client comparing them always sees the change.
    fn restarted(&self) {
        let mut startup = lock(&self.startup);
        *startup = Utc::now().max(*startup + chrono::Duration::milliseconds(1));
    }

    /// How long `number`'s callee rings before answering (unscaled).
    fn answer_delay(&self, number: &str) -> Duration {
        let cfg = self.cfg();
        cfg.answer_delays
            .get(number)
            .copied()
            .unwrap_or(cfg.answer_delay)
    }

    fn dialplan_lag(&self) -> Duration {
        self.cfg().dialplan_lag
    }

    fn inbound_app(&self) -> String {
        self.cfg().inbound_app.clone()
    }

    /// How long a continued channel waits in an unknown context before its
    /// `Hangup()`, already scaled.
    fn continue_hangup_after(&self) -> Option<Duration> {
        let cfg = self.cfg();
        cfg.continue_hangup_after
            .map(|d| d.mul_f64(cfg.time_scale.max(0.0)))
    }

    /// What `AMD()` decides for `number`: `SimConfig.amd`, else the lab
    /// greeting it was dialled to, else a human.
    fn amd_verdict(&self, number: &str, greeting: Option<Greeting>) -> AmdVerdict {
        self.cfg()
            .amd
            .get(number)
            .cloned()
            .or_else(|| greeting.map(Greeting::verdict))
            .unwrap_or_else(AmdVerdict::human)
    }

    /// The keys `number`'s callee presses: (delay after the answer, already
    /// scaled; digit).
    fn dtmf_script(&self, number: &str) -> Vec<(Duration, char)> {
        let cfg = self.cfg();
        let scale = cfg.time_scale.max(0.0);
        cfg.dtmf
            .get(number)
            .map(|keys| keys.iter().map(|(d, c)| (d.mul_f64(scale), *c)).collect())
            .unwrap_or_default()
    }

    fn is_amd_context(&self, context: &str) -> bool {
        self.cfg().amd_contexts.iter().any(|c| c == context)
    }

    /// The Stasis app and args a context of `stasis_contexts` hands a
    /// channel to, `${EXTEN}` replaced by `exten`.
    fn stasis_context(&self, context: &str, exten: &str) -> Option<(String, Vec<String>)> {
        let cfg = self.cfg();
        let (app, args) = cfg.stasis_contexts.get(context)?;
        let args = args.iter().map(|a| a.replace("${EXTEN}", exten)).collect();
        Some((app.clone(), args))
    }

    /// Whether a media URI can be played in `lang`, and until when.
    fn media_length(&self, media: &str, lang: &str) -> (bool, tokio::time::Instant) {
        let now = tokio::time::Instant::now();
        let cfg = self.cfg();
        let (ok, length) = match media.split_once(':') {
            Some(("sound", name)) => match cfg.sounds.get(name) {
                Some(s) if s.languages.iter().any(|l| l == lang) => (true, s.duration),
                _ => (false, Duration::from_millis(1)),
            },
            Some(("number", n)) => match say::number_words(n, lang) {
                Some(words) => (true, say::SPOKEN_WORD * words as u32),
                None => (false, Duration::from_millis(1)),
            },
            Some(("digits", n)) => match say::digit_words(n) {
                Some(words) => (true, say::SPOKEN_WORD * words as u32),
                None => (false, Duration::from_millis(1)),
            },
            Some(("silence", secs)) => match secs.parse::<u64>() {
                Ok(s) => (true, Duration::from_secs(s)),
                Err(_) => (false, Duration::from_millis(1)),
            },
            _ => (false, Duration::from_millis(1)),
        };
        // A failing sound ends at once, whatever the scale.
        let length = if ok {
            length.mul_f64(cfg.time_scale.max(0.0))
        } else {
            length
        };
        (ok, now + length)
    }
}

/// A running simulator on a loopback port.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Simulator {
    /// Starts on `127.0.0.1:port` (0 picks a free port).
    pub async fn start(config: SimConfig, port: u16) -> std::io::Result<Simulator> {
        let shared = Arc::new(Shared {
            cfg: Mutex::new(config),
            inner: Mutex::new(Inner {
                // The lab's trunk (README "Trunks from common providers"), qualified.
                endpoints: [("PJSIP/voip_issabel".to_owned(), "online".to_owned())].into(),
                ..Inner::default()
            }),
            asterisk_id: "02:fc:00:00:00:01".into(),
            startup: Mutex::new(Utc::now()),
        });
        let listener = http::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(Simulator {
            shared,
            addr,
            server: Mutex::new(Some(server)),
        })
    }

    /// The base URL to give the ARI client (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the configuration of the running simulator.
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.shared.cfg());
    }

    /// Closes every event WebSocket, as a network blip would. Channels
    /// stay up; their apps are unregistered until clients reconnect.
    pub fn drop_websockets(&self) {
        let mut inner = self.shared.inner();
        for conn in inner.conns.values() {
            let _ = conn.send(WsOut::Close(None));
        }
        inner.conns.clear();
        inner.apps.clear();
    }

    /// An Asterisk restart: every connection is cut, every live channel is
    /// lost without events, and connections are refused for `down`; it
    /// comes back with a new `startup_time`.
    pub async fn restart(&self, down: Duration) -> std::io::Result<()> {
        self.stop_server().await;
        self.drop_websockets();
        self.forget_everything();
        self.come_back(down).await
    }

    /// `core stop now` (fact 13, recording `shutdown-mid-prompt`): every
    /// call is torn down at once (soft hangup cause 4, playbacks `failed`,
    /// `StasisEnd`, `ChannelDestroyed` cause 0), bridges are destroyed;
    /// about 1.1 s later (scaled) every event WebSocket is dropped with no
    /// close frame and connections are refused for `down`. Returns once
    /// Asterisk is back, empty, with a new `startup_time`.
    pub async fn stop_now(&self, down: Duration) -> std::io::Result<()> {
        let exit_at = tokio::time::Instant::now() + self.at_least_30ms(Duration::from_millis(1100));
        let tasks = {
            let mut inner = self.shared.inner();
            inner.stopping = true;
            let mut tasks: Vec<tokio::sync::mpsc::UnboundedSender<Ctl>> = Vec::new();
            for ctl in inner.channels.values().filter_map(|c| c.ctl.as_ref()) {
                // Both halves of a Local pair share their call's task.
                if !tasks.iter().any(|t| t.same_channel(ctl)) {
                    tasks.push(ctl.clone());
                }
            }
            tasks
        };
        for task in &tasks {
            let _ = task.send(Ctl::Shutdown);
        }
        self.shared.with(|e| {
            for id in channel_ids(e.inner, |c| c.ctl.is_none()) {
                call::shutdown_lone(e, &id, None);
            }
        });
        // Bridges go once their channels have left them.
        while tokio::time::Instant::now() < exit_at
            && self
                .shared
                .inner()
                .channels
                .values()
                .any(|c| c.ctl.is_some())
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.shared.with(|e| {
            // A task that could not answer in time: its channels go here.
            for id in channel_ids(e.inner, |_| true) {
                call::shutdown_lone(e, &id, None);
            }
            e.end_bridges();
        });
        tokio::time::sleep_until(exit_at).await;
        self.cut_websockets();
        self.stop_server().await;
        self.forget_everything();
        self.come_back(down).await
    }

    /// `core stop gracefully` (fact 14, recording
    /// `shutdown-graceful-mid-prompt`): no event; calls go on, every
    /// originate answers 500 `Allocation failed`. Once no channel is left,
    /// 2 s later (scaled) every WebSocket gets a close frame 1000, about
    /// 1.7 s after that the process exits and connections are refused for
    /// `down`. Returns once Asterisk is back with a new `startup_time`.
    pub async fn stop_gracefully(&self, down: Duration) -> std::io::Result<()> {
        self.shared.inner().stopping = true;
        while !self.shared.inner().channels.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(self.at_least_30ms(Duration::from_secs(2))).await;
        {
            let mut inner = self.shared.inner();
            for conn in inner.conns.values() {
                let _ = conn.send(WsOut::Close(Some(1000)));
            }
            inner.conns.clear();
            inner.apps.clear();
        }
        tokio::time::sleep(self.at_least_30ms(Duration::from_millis(1700))).await;
        // Whoever connected after the close frame is cut by the exit.
        self.cut_websockets();
        self.stop_server().await;
        self.forget_everything();
        self.come_back(down).await
    }

    /// Between `core stop …` and the end of the restart.
    pub fn is_stopping(&self) -> bool {
        self.shared.inner().stopping
    }

    /// `status.startup_time` of `GET /ari/asterisk/info`, as Asterisk
    /// formats it (`2026-01-10T11:41:58.123+0000`).
    pub fn startup_time(&self) -> String {
        self.shared.startup_stamp()
    }

    /// `d` on the simulator's time scale, as its calls and prompts run.
    pub fn scaled(&self, d: Duration) -> Duration {
        self.shared.scaled(d)
    }

    /// A scaled step of a shutdown, never so short that the events before
    /// it could still be in flight.
    fn at_least_30ms(&self, d: Duration) -> Duration {
        self.shared.scaled(d).max(Duration::from_millis(30))
    }

    async fn stop_server(&self) {
        let server = lock(&self.server).take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }

    /// The process exits: every WebSocket's TCP connection is closed with
    /// no close frame.
    fn cut_websockets(&self) {
        let mut inner = self.shared.inner();
        for conn in inner.conns.values() {
            let _ = conn.send(WsOut::Cut);
        }
        inner.conns.clear();
        inner.apps.clear();
    }

    /// A new process knows nothing of the old one's channels and bridges.
    fn forget_everything(&self) {
        let mut inner = self.shared.inner();
        let ids: Vec<String> = inner.channels.keys().cloned().collect();
        for id in ids {
            inner.remove_channel(&id);
        }
        inner.bridges.clear();
        inner.bridge_apps.clear();
        inner.bridge_playbacks.clear();
        // Subscriptions live in the Asterisk process, not in its config.
        inner.endpoint_subs.clear();
    }

    async fn come_back(&self, down: Duration) -> std::io::Result<()> {
        tokio::time::sleep(down).await;
        let listener = http::bind(self.addr)?;
        self.shared.restarted();
        self.shared.inner().stopping = false;
        *lock(&self.server) = Some(tokio::spawn(http::serve(listener, self.shared.clone())));
        Ok(())
    }

    /// Live channels (each Local call is two).
    pub fn live_channels(&self) -> usize {
        self.shared.inner().channels.len()
    }

    /// Live originated calls (one per originate until its channel is gone).
    pub fn live_calls(&self) -> usize {
        self.shared.inner().live_calls
    }

    /// The most calls that were ever live at once.
    pub fn peak_calls(&self) -> usize {
        self.shared.inner().peak_calls
    }

    /// (when, live calls) at every change since start.
    pub fn live_log(&self) -> Vec<(Instant, usize)> {
        self.shared.inner().live_log.clone()
    }

    pub fn live_bridges(&self) -> usize {
        self.shared.inner().bridges.len()
    }

    /// Registered Stasis apps.
    pub fn registered_apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.shared.inner().apps.keys().cloned().collect();
        apps.sort();
        apps
    }

    /// (channel, when) of every StasisStart sent, for latency figures.
    pub fn stasis_starts(&self) -> Vec<(String, Instant)> {
        self.shared.inner().stasis_log.clone()
    }

    /// Every REST request received, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.inner().requests.clone()
    }

    /// Sets an endpoint's state (`"PJSIP/voip_issabel"`, `"offline"`),
    /// creating it if Asterisk did not know it; a change is sent as
    /// `EndpointStateChange` to the apps subscribed to it.
    pub fn set_endpoint_state(&self, endpoint: &str, state: &str) {
        self.shared.set_endpoint_state(endpoint, state);
    }

    /// The apps subscribed to an endpoint's events.
    pub fn endpoint_subscribers(&self, endpoint: &str) -> Vec<String> {
        self.shared
            .inner()
            .endpoint_subs
            .get(endpoint)
            .cloned()
            .unwrap_or_default()
    }

    /// How many originates were received (accepted or not).
    pub fn originate_count(&self) -> usize {
        self.shared
            .inner()
            .requests
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/ari/channels")
            .count()
    }

    /// Sends a raw text frame to the connection holding `app`, as if
    /// Asterisk had sent it (malformed or future events).
    pub fn inject(&self, app: &str, text: &str) -> bool {
        let inner = self.shared.inner();
        match inner.apps.get(app).and_then(|c| inner.conns.get(c)) {
            Some(conn) => conn.send(WsOut::Text(text.to_owned())).is_ok(),
            None => false,
        }
    }

    /// Simulates a caller dialling the inbound number from `caller_number`
    /// over a SIP trunk: the channel enters `Stasis(<inbound app>)` answered.
    /// `None` when the app is not registered or Asterisk is stopping.
    /// Plays like any channel in Stasis; `DELETE` gives `ChannelHangupRequest`
    /// 32 soft, `StasisEnd`, `ChannelDestroyed`.
    pub fn inbound_call(&self, caller_number: &str) -> Option<String> {
        http::inbound_call(&self.shared, caller_number)
    }

    /// Simulates the PBX reaching the inbound number through a Local
    /// channel of its own (a ring group, follow-me): the `;2` half, with id
    /// `<unique id>;2`, enters `Stasis(<inbound app>)` answered, in context
    /// `from-voip` priority 2 with `caller.number` set; its `;1` half is in
    /// no app and no app hears of it. Hanging up `;2` (`DELETE`, or
    /// `hang_up_caller`) takes `;1` with it. Returns the `;2` id; `None`
    /// when the app is not registered or Asterisk is stopping.
    pub fn inbound_local_call(&self, caller_number: &str) -> Option<String> {
        http::inbound_local_call(&self.shared, caller_number)
    }

    /// The other party of `channel_id` hangs up now: the caller of an
    /// inbound call (`ChannelHangupRequest` 16, not soft; a playback ends
    /// `failed`; `StasisEnd`; `ChannelDestroyed` 16; a Local `;2` takes its
    /// `;1` with it), the callee of an answered outbound call (as when it
    /// hangs up by itself). Nothing happens to a call still ringing or to
    /// an unknown channel.
    pub fn hang_up_caller(&self, channel_id: &str) {
        let ctl = self
            .shared
            .inner()
            .channels
            .get(channel_id)
            .and_then(|c| c.ctl.clone());
        if let Some(ctl) = ctl {
            let _ = ctl.send(Ctl::FarEndHangup);
        }
    }

    /// The caller on `caller_channel_id` says `ulaw` (8 kHz μ-law), after
    /// whatever it still has to say; padded with silence (0xFF) to whole
    /// 20 ms frames. It reaches the daemon as RTP from every externalMedia
    /// channel bridged with the caller, one frame every 20 ms; speech
    /// waits while the caller is in no such bridge, and is lost when the
    /// caller hangs up. Unknown channels are ignored.
    pub fn caller_says(&self, caller_channel_id: &str, ulaw: Vec<u8>) {
        media::say(&mut self.shared.inner(), caller_channel_id, ulaw);
    }

    /// Every RTP packet the caller on `caller_channel_id` heard: those that
    /// reached an externalMedia channel while it was bridged with the
    /// caller, in arrival order. Still there after the caller hung up.
    pub fn heard(&self, caller_channel_id: &str) -> Vec<Heard> {
        self.shared
            .inner()
            .heard
            .get(caller_channel_id)
            .cloned()
            .unwrap_or_default()
    }

    /// When each RTP packet of the caller's speech left the simulator for
    /// the daemon, in order (for latency figures). Still there after the
    /// caller hung up.
    pub fn said(&self, caller_channel_id: &str) -> Vec<Said> {
        self.shared
            .inner()
            .said
            .get(caller_channel_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Datagrams that reached an externalMedia channel but were not RTP.
    pub fn bad_rtp(&self) -> usize {
        self.shared.inner().bad_rtp
    }

    /// The RTP socket of a live externalMedia channel
    /// (`UNICASTRTP_LOCAL_ADDRESS`:`UNICASTRTP_LOCAL_PORT`).
    pub fn external_media_addr(&self, unicast_channel_id: &str) -> Option<SocketAddr> {
        self.shared
            .inner()
            .media
            .get(unicast_channel_id)
            .map(|m| m.local)
    }

    /// Where `continue` sent `channel_id`: (context, extension, priority),
    /// once it left Stasis; kept after the channel is gone.
    pub fn continued_to(&self, channel_id: &str) -> Option<(String, String, i64)> {
        self.shared
            .inner()
            .continued
            .get(channel_id)
            .map(|t| (t.context.clone(), t.exten.clone(), t.priority))
    }

    /// What was played to `channel_id`, one entry per media item that
    /// started, in play order; kept after the channel is gone. Media that
    /// could not be played (a sound missing in that language) never
    /// started and is not listed; playbacks into bridges are not either.
    pub fn played(&self, channel_id: &str) -> Vec<Played> {
        self.shared
            .inner()
            .played
            .get(channel_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The party behind `channel_id` presses `digit`: as the digit ends,
    /// 0.2 s later (scaled, as `SendDTMF` in the lab), the channel facing
    /// the app gets `ChannelDtmfReceived` (duration 100 ms, fact 15): the
    /// channel itself if it is in Stasis, else its Local partner if that
    /// one is (the callee presses on `;2`, the app hears it on `;1`), else
    /// the channel itself, whose followers still hear it. Needs a Tokio
    /// runtime; nothing happens for a channel gone meanwhile.
    pub fn press(&self, channel_id: &str, digit: char) {
        let shared = self.shared.clone();
        let id = channel_id.to_owned();
        let after = self.shared.scaled(call::DTMF_LENGTH);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            shared.with(|e| {
                if let Some(target) = call::dtmf_target(e.inner, &id) {
                    e.dtmf(&target, digit);
                }
            });
        });
    }

    pub async fn shutdown(self) {
        self.stop_server().await;
        self.drop_websockets();
        self.forget_everything();
    }
}

/// Ids of the live channels `pick` selects, in a stable order.
fn channel_ids(inner: &Inner, pick: impl Fn(&state::Chan) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = inner
        .channels
        .iter()
        .filter(|(_, c)| pick(c))
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    ids
}
