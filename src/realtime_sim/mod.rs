//! A fake OpenAI Realtime server (GA protocol, WebSocket), so the inbound
//! voice agent can be tested on a machine that cannot reach OpenAI. It
//! follows the GA event shapes and refuses what the real service refuses
//! (the beta header, a missing or wrong key, beta-shaped sessions, PCM
//! without its rate, cancelling nothing, truncating past the audio, a tool
//! result before its call is done), so that a client which passes here
//! needs only the URL and key changed for the real service.
//!
//! What it does on its own: `session.created` on connect; a simple energy
//! VAD on the caller's audio (RMS over 20 ms frames against
//! [`FakeConfig::vad_threshold`]) that emits `speech_started`,
//! `speech_stopped`, `committed` and, with `create_response`, a response;
//! responses whose audio is [`g711::pattern_ulaw`] (a marker, then a tone),
//! paced by [`FakeConfig::audio_chunk_ms`] / [`FakeConfig::chunk_interval`]
//! (default: real time, 20 ms of audio every 20 ms); barge-in, which with
//! `interrupt_response` cancels the response (`response.done`, status
//! `cancelled`, reason `turn_detected`) as the GA reference says; and, when
//! the session asks for input transcription, the caller's words
//! ([`FakeConfig::caller_transcript`]) after each committed turn.
//!
//! Test hooks: make the next response a function call
//! ([`FakeRealtime::next_response_calls_tool`]), confirm a different output
//! format than asked, delay the handshake, refuse every connection, leave a
//! talked-over response active until the client cancels it. Every
//! connection is recorded ([`ConnRecord`]): the client's events in order,
//! the audio it sent, the sessions announced, truncations, function
//! outputs, the server's events and errors, and when the audio went by
//! (each append's arrival, each audio delta's and `speech_started`'s
//! sending), for latency figures ([`TimedAppend`], [`TimedDelta`]).

mod conn;
pub mod g711;
mod server;
mod session;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use session::Format;

/// The model the default configuration accepts.
pub const DEFAULT_MODEL: &str = "gpt-realtime";

/// The voice agent's tools (spec §9). The fake calls any declared tool the
/// same way; these names are here so tests share one spelling.
pub const TOOLS: [&str; 3] = [
    "registrar_promesa_de_pago",
    "transferir_a_asesor",
    "finalizar_llamada",
];

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The key `Authorization: Bearer …` must carry; anything else is 401.
    pub api_key: String,
    /// Models `?model=` may name; empty accepts any non-empty name.
    pub accept_models: Vec<String>,
    /// When set (`"audio/pcm"`, `"audio/pcmu"`, `"audio/pcma"`), every
    /// `session.updated` confirms this output format whatever the client
    /// asked, and the audio follows it: for clients that must notice and
    /// fall back.
    pub confirm_output_format: Option<String>,
    /// How long the server sits on the upgrade request before answering
    /// (for a client's connect timeout).
    pub handshake_delay: Duration,
    /// Refuse every upgrade with 503 (an outage).
    pub refuse_all: bool,
    /// VAD: a 20 ms frame whose RMS (16-bit linear) reaches this is speech.
    /// The session's `threshold` (0–1) is echoed but not used.
    pub vad_threshold: f64,
    /// Length of an audio response.
    pub response_audio_ms: u32,
    /// Audio per `response.output_audio.delta`.
    pub audio_chunk_ms: u32,
    /// Time between deltas; `Duration::ZERO` sends them as fast as possible
    /// (like the real service, which produces audio faster than real time).
    pub chunk_interval: Duration,
    /// Gap between `response.function_call_arguments.done` and the
    /// response's `response.done`, during which a premature
    /// `function_call_output` is refused.
    pub tool_call_done_delay: Duration,
    /// On barge-in (`interrupt_response`), end the response at once with
    /// `response.done` (`cancelled`, `turn_detected`), as the GA reference
    /// describes. `false`: only stop its audio and leave it active until
    /// the client sends `response.cancel`, so a client is tested against
    /// both orders of events.
    pub barge_in_cancels: bool,
    /// The transcript of every audio response.
    pub transcript: String,
    /// What the caller "said": the transcript of every committed user
    /// turn, sent when the session asks for input transcription.
    pub caller_transcript: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            api_key: "sk-fake-realtime".into(),
            accept_models: vec![DEFAULT_MODEL.into()],
            confirm_output_format: None,
            handshake_delay: Duration::ZERO,
            refuse_all: false,
            vad_threshold: 1000.0,
            response_audio_ms: 1000,
            audio_chunk_ms: 20,
            chunk_interval: Duration::from_millis(20),
            tool_call_done_delay: Duration::from_millis(50),
            barge_in_cancels: true,
            transcript: "Respuesta de prueba del simulador.".into(),
            caller_transcript: "Hola, quiero pagar mi factura.".into(),
        }
    }
}

/// One client event as received.
#[derive(Debug, Clone)]
pub struct ClientEvent {
    /// Its `type` (empty if it had none or was not JSON).
    pub kind: String,
    /// The whole event (a JSON string if it was not JSON).
    pub json: Value,
}

/// A `conversation.item.truncate` the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub item_id: String,
    pub content_index: u64,
    pub audio_end_ms: u64,
    /// How much audio the item had before (ms).
    pub item_audio_ms: u64,
}

/// A `function_call_output` the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionOutput {
    pub call_id: String,
    /// The tool the call was for.
    pub name: String,
    pub output: String,
}

/// An `input_audio_buffer.append` the server accepted, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedAppend {
    /// When its message came off the socket (before it was parsed).
    pub at: Instant,
    /// Where its decoded audio is in [`ConnRecord::audio_in`].
    pub audio: Range<usize>,
}

/// A `response.output_audio.delta` the server sent, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedDelta {
    /// When the server began writing the batch of events holding it to
    /// the socket (the batch's events are written back to back).
    pub at: Instant,
    pub item_id: String,
    /// Decoded audio bytes it carried.
    pub bytes: usize,
}

/// Everything one WebSocket connection did, in order.
#[derive(Debug, Clone, Default)]
pub struct ConnRecord {
    /// 0, 1, … in the order connections were upgraded.
    pub id: usize,
    pub model: String,
    /// It sent `OpenAI-Beta: realtime=v1` and was refused.
    pub beta_refused: bool,
    pub events: Vec<ClientEvent>,
    /// The decoded `input_audio_buffer.append` bytes, concatenated.
    pub audio_in: Vec<u8>,
    /// Each session the server announced: `session.created`'s, then one
    /// per `session.updated`.
    pub sessions: Vec<Value>,
    pub truncations: Vec<Truncation>,
    pub function_outputs: Vec<FunctionOutput>,
    /// The `type` of every event the server sent.
    pub sent: Vec<String>,
    /// The `error` object of every error event the server sent.
    pub errors: Vec<Value>,
    /// Every accepted `input_audio_buffer.append`, with its arrival time.
    pub appends: Vec<TimedAppend>,
    /// Every `response.output_audio.delta` sent, with its sending time.
    pub deltas: Vec<TimedDelta>,
    /// When each `input_audio_buffer.speech_started` was sent (as
    /// [`TimedDelta::at`]).
    pub speech_started: Vec<Instant>,
    /// Things a test may want to know that the protocol does not show
    /// (e.g. a scripted tool the session had not declared).
    pub notes: Vec<String>,
    /// Still connected.
    pub open: bool,
}

impl ConnRecord {
    /// The client events of one type.
    pub fn events_of(&self, kind: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| &e.json)
            .collect()
    }
}

/// What the next response on a connection is.
#[derive(Debug, Clone)]
pub(crate) enum Script {
    ToolCall { name: String, arguments: String },
}

#[derive(Default)]
pub(crate) struct State {
    pub attempts: usize,
    pub refused: usize,
    pub conns: Vec<ConnRecord>,
    /// For the next response on any connection.
    pub scripts: VecDeque<Script>,
    /// For the next response on one connection (taken before `scripts`).
    pub conn_scripts: HashMap<usize, VecDeque<Script>>,
}

pub(crate) struct Shared {
    pub cfg: FakeConfig,
    state: Mutex<State>,
}

impl Shared {
    /// The lock survives a panicking test thread: the data is only records.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on connection `id`'s record.
    pub fn with_conn<R>(&self, id: usize, f: impl FnOnce(&mut ConnRecord) -> R) -> Option<R> {
        self.state().conns.get_mut(id).map(f)
    }

    pub fn next_script(&self, id: usize) -> Option<Script> {
        let mut st = self.state();
        if let Some(s) = st.conn_scripts.get_mut(&id).and_then(VecDeque::pop_front) {
            return Some(s);
        }
        st.scripts.pop_front()
    }
}

/// The running fake. Dropping it stops it too, but without waiting.
pub struct FakeRealtime {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl FakeRealtime {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start(cfg: FakeConfig) -> std::io::Result<FakeRealtime> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State::default()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, shared.clone(), stopped));
        Ok(FakeRealtime {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// `ws://127.0.0.1:PORT/v1/realtime`; the client adds `?model=…`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &FakeConfig {
        &self.shared.cfg
    }

    /// The next response on whichever connection answers first calls tool
    /// `name` with `arguments_json` (JSON text, sent as given) instead of
    /// speaking. Queued: two calls script two responses. If the session has
    /// not declared the tool, the fake speaks instead (a model calls only
    /// declared tools) and notes it in [`ConnRecord::notes`].
    pub fn next_response_calls_tool(&self, name: &str, arguments_json: &str) {
        self.shared.state().scripts.push_back(Script::ToolCall {
            name: name.into(),
            arguments: arguments_json.into(),
        });
    }

    /// Like [`next_response_calls_tool`](Self::next_response_calls_tool),
    /// for connection `conn` only.
    pub fn next_response_calls_tool_on(&self, conn: usize, name: &str, arguments_json: &str) {
        self.shared
            .state()
            .conn_scripts
            .entry(conn)
            .or_default()
            .push_back(Script::ToolCall {
                name: name.into(),
                arguments: arguments_json.into(),
            });
    }

    /// Upgrade requests received (accepted or not).
    pub fn attempts(&self) -> usize {
        self.shared.state().attempts
    }

    /// Upgrade requests answered with an HTTP error (401, 404, 503).
    pub fn refused(&self) -> usize {
        self.shared.state().refused
    }

    /// WebSocket connections established (including those then refused
    /// with an error event).
    pub fn connections(&self) -> usize {
        self.shared.state().conns.len()
    }

    /// Connections still open.
    pub fn open_connections(&self) -> usize {
        self.shared.state().conns.iter().filter(|c| c.open).count()
    }

    /// A copy of connection `id`'s record.
    pub fn conn(&self, id: usize) -> Option<ConnRecord> {
        self.shared.state().conns.get(id).cloned()
    }

    /// Copies of every connection's record.
    pub fn conns(&self) -> Vec<ConnRecord> {
        self.shared.state().conns.clone()
    }

    /// Waits (polling) until connection `id`'s record satisfies `pred`, up
    /// to `timeout`; returns the record if it did.
    pub async fn wait_for(
        &self,
        id: usize,
        timeout: Duration,
        pred: impl Fn(&ConnRecord) -> bool,
    ) -> Option<ConnRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.conn(id) {
                if pred(&c) {
                    return Some(c);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes every connection (close frame 1001), stops listening and
    /// waits for all of it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeRealtime {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use futures_util::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    /// The timings a latency figure needs are recorded in order, and each
    /// is taken before the client could have seen what it times.
    #[tokio::test]
    async fn appends_deltas_and_speech_started_are_timed() {
        let fake = FakeRealtime::start(FakeConfig {
            response_audio_ms: 100,
            ..FakeConfig::default()
        })
        .await
        .unwrap();
        let mut req = format!("{}?model={DEFAULT_MODEL}", fake.url())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", "Bearer sk-fake-realtime".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let update = json!({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
            "output": {"format": {"type": "audio/pcmu"}}}}});
        ws.send(Message::text(update.to_string())).await.unwrap();
        let mut said = g711::tone_ulaw(100, 440, 8000.0);
        said.extend(g711::silence_ulaw(600));
        let before = Instant::now();
        for chunk in said.chunks(160) {
            let append = json!({"type": "input_audio_buffer.append", "audio": B64.encode(chunk)});
            ws.send(Message::text(append.to_string())).await.unwrap();
        }
        let mut seen = Vec::new();
        let first_delta = loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let Message::Text(t) = msg else { continue };
            let ev: Value = serde_json::from_str(t.as_str()).unwrap();
            seen.push((
                ev["type"].as_str().unwrap_or_default().to_owned(),
                Instant::now(),
            ));
            if ev["type"] == "response.output_audio.delta" {
                break ev;
            }
        };
        // The last appends may be handled after the answer began.
        let frames = said.len() / 160;
        let rec = fake
            .wait_for(0, Duration::from_secs(5), |c| c.appends.len() >= frames)
            .await
            .unwrap();
        assert_eq!(rec.appends.len(), frames);
        assert_eq!(rec.appends[0].audio, 0..160);
        for w in rec.appends.windows(2) {
            assert_eq!(w[0].audio.end, w[1].audio.start);
            assert!(before <= w[0].at && w[0].at <= w[1].at);
        }
        let heard = |kind: &str| seen.iter().find(|(k, _)| k == kind).unwrap().1;
        assert_eq!(rec.speech_started.len(), 1);
        assert!(rec.appends[0].at <= rec.speech_started[0]);
        assert!(rec.speech_started[0] <= heard("input_audio_buffer.speech_started"));
        let d = &rec.deltas[0];
        assert_eq!(d.item_id, first_delta["item_id"].as_str().unwrap());
        assert_eq!(d.bytes, 160, "20 ms of μ-law");
        assert!(d.at <= heard("response.output_audio.delta"));
        fake.shutdown().await;
    }
}
