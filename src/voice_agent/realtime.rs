//! The OpenAI Realtime connection of one agent call, GA protocol (README
//! "The voice agent"): connect with `Authorization: Bearer` and never the
//! retired `OpenAI-Beta` header, configure the session for μ-law both
//! ways, then exchange events.
//!
//! `connect` returns only once `session.updated` confirmed `audio/pcmu` in
//! and out: a session that would play garbled audio is refused here and
//! the caller hears the fallback prompt instead. Everything the server
//! sends afterwards is turned into [`ServerEvent`]; events the agent does
//! not act on are kept as `Other` (logged at debug), never an error.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why there is no session: decides the fallback's `how`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No answer in time, no TCP connection, or a server error (5xx).
    #[error("OpenAI unreachable: {0}")]
    Unreachable(String),
    /// The service answered and said no (bad key, bad model, an `error`
    /// event, a session that does not confirm μ-law).
    #[error("OpenAI refused the session: {0}")]
    Refused(String),
}

/// What a session is set up with.
pub struct SessionSpec<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub api_key: &'a str,
    pub voice: &'a str,
    pub instructions: &'a str,
    pub transcription_model: &'a str,
    pub tools: Vec<Value>,
}

/// The `session.update` the daemon sends (README "The voice agent").
pub fn session_update(spec: &SessionSpec<'_>) -> Value {
    let mut input = json!({
        "format": {"type": "audio/pcmu"},
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": true,
            "interrupt_response": true
        }
    });
    if !spec.transcription_model.is_empty() {
        input["transcription"] = json!({"model": spec.transcription_model});
    }
    json!({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": spec.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": input,
                "output": {"format": {"type": "audio/pcmu"}, "voice": spec.voice}
            },
            "tools": spec.tools,
            "tool_choice": "auto"
        }
    })
}

/// Whether a `session.updated` confirms μ-law both ways; the error says
/// what the server answered instead.
pub fn confirms_pcmu(session: &Value) -> Result<(), String> {
    let input = &session["audio"]["input"]["format"];
    let output = &session["audio"]["output"]["format"];
    if input["type"] == "audio/pcmu" && output["type"] == "audio/pcmu" {
        Ok(())
    } else {
        Err(format!(
            "session.updated has input format {input} and output format {output}, not audio/pcmu"
        ))
    }
}

/// What the server said, as far as the agent cares.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `response.output_audio.delta`, decoded.
    Audio {
        item_id: String,
        audio: Vec<u8>,
    },
    SpeechStarted,
    ResponseCreated {
        id: String,
    },
    /// A function call item appeared (its name, before the arguments).
    FunctionItem {
        call_id: String,
        name: String,
    },
    FunctionArgs {
        call_id: String,
        name: Option<String>,
        arguments: String,
    },
    /// `response.done`: tokens and whether any audio came with it.
    ResponseDone {
        id: String,
        status: String,
        tokens_in: u64,
        tokens_out: u64,
        /// Function calls in its output, `(call_id, name, arguments)`.
        calls: Vec<(String, String, String)>,
    },
    /// One side's words, for transcripts.
    Transcript {
        agent: bool,
        text: String,
    },
    Error {
        code: String,
        message: String,
    },
    Other(String),
}

/// Decodes one server event. A message we cannot read is `Other` with a
/// note (logged by the caller), never a reason to end the call.
pub fn parse(text: &str) -> ServerEvent {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return ServerEvent::Other(format!("not JSON: {:.80}", text));
    };
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    match v["type"].as_str().unwrap_or("") {
        "response.output_audio.delta" => {
            match base64::engine::general_purpose::STANDARD.decode(s(&v["delta"])) {
                Ok(audio) => ServerEvent::Audio {
                    item_id: s(&v["item_id"]),
                    audio,
                },
                Err(_) => ServerEvent::Other("audio delta that is not base64".into()),
            }
        }
        "input_audio_buffer.speech_started" => ServerEvent::SpeechStarted,
        "response.created" => ServerEvent::ResponseCreated {
            id: s(&v["response"]["id"]),
        },
        "response.output_item.added" | "response.output_item.done"
            if v["item"]["type"] == "function_call" =>
        {
            ServerEvent::FunctionItem {
                call_id: s(&v["item"]["call_id"]),
                name: s(&v["item"]["name"]),
            }
        }
        "response.function_call_arguments.done" => ServerEvent::FunctionArgs {
            call_id: s(&v["call_id"]),
            name: v["name"].as_str().map(str::to_owned),
            arguments: s(&v["arguments"]),
        },
        "response.done" => {
            let r = &v["response"];
            let usage = &r["usage"];
            let calls = r["output"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter(|i| i["type"] == "function_call")
                        .map(|i| (s(&i["call_id"]), s(&i["name"]), s(&i["arguments"])))
                        .collect()
                })
                .unwrap_or_default();
            ServerEvent::ResponseDone {
                id: s(&r["id"]),
                status: s(&r["status"]),
                tokens_in: usage["input_tokens"].as_u64().unwrap_or(0),
                tokens_out: usage["output_tokens"].as_u64().unwrap_or(0),
                calls,
            }
        }
        "response.output_audio_transcript.done" => ServerEvent::Transcript {
            agent: true,
            text: s(&v["transcript"]),
        },
        "conversation.item.input_audio_transcription.completed" => ServerEvent::Transcript {
            agent: false,
            text: s(&v["transcript"]),
        },
        "error" => ServerEvent::Error {
            code: s(&v["error"]["code"]),
            message: s(&v["error"]["message"]),
        },
        other => ServerEvent::Other(other.to_owned()),
    }
}

/// Client events, as JSON text.
pub fn append(audio: &[u8]) -> String {
    json!({
        "type": "input_audio_buffer.append",
        "audio": base64::engine::general_purpose::STANDARD.encode(audio)
    })
    .to_string()
}

pub fn cancel() -> String {
    json!({"type": "response.cancel"}).to_string()
}

pub fn truncate(item_id: &str, audio_end_ms: u64) -> String {
    json!({
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms
    })
    .to_string()
}

pub fn function_output(call_id: &str, output: &str) -> String {
    json!({
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output}
    })
    .to_string()
}

/// `response.create`, with instructions for this response only.
pub fn respond(instructions: Option<&str>) -> String {
    match instructions {
        Some(i) => json!({"type": "response.create", "response": {"instructions": i}}),
        None => json!({"type": "response.create"}),
    }
    .to_string()
}

/// A live session: events in, client events out (a writer task sends
/// them, so a slow socket never holds up the audio path).
pub struct Session {
    pub events: futures_util::stream::SplitStream<Ws>,
    last_frame: tokio::time::Instant,
    pub out: mpsc::UnboundedSender<Message>,
    writer: tokio::task::JoinHandle<()>,
}

impl Session {
    pub fn send(&self, text: String) {
        let _ = self.out.send(Message::text(text));
    }

    /// The next server event; `None` when the socket closed.
    pub async fn next(&mut self) -> Option<ServerEvent> {
        loop {
            let frame = self.events.next().await?;
            self.last_frame = tokio::time::Instant::now();
            match frame {
                Ok(Message::Text(t)) => return Some(parse(t.as_str())),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Asks the server for a sign of life; any frame back (the pong
    /// included) counts.
    pub fn ping(&self) {
        let _ = self.out.send(Message::Ping(Vec::new().into()));
    }

    /// How long since the server last sent anything.
    pub fn silent_for(&self) -> Duration {
        self.last_frame.elapsed()
    }

    /// Closes the socket (a close frame, then the writer ends).
    pub async fn close(self) {
        let _ = self.out.send(Message::Close(None));
        drop(self.out);
        let mut writer = self.writer;
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

/// Connects and configures a session within `timeout`.
pub async fn connect(spec: &SessionSpec<'_>, timeout: Duration) -> Result<Session, ConnectError> {
    match tokio::time::timeout(timeout, connect_inner(spec)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Unreachable(format!(
            "no session within {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn connect_inner(spec: &SessionSpec<'_>) -> Result<Session, ConnectError> {
    let sep = if spec.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}model={}", spec.url, spec.model);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Refused(format!("bad voice_agent.url: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", spec.api_key)).map_err(|_| {
        ConnectError::Refused("the API key holds characters a header cannot".into())
    })?;
    req.headers_mut().insert("Authorization", bearer);
    // Nagle off: caller audio goes out as it comes (with it on, an append
    // waited for the server's delayed ACK: 20–30 ms on 2 % of packets in
    // the benchmark). An 8 KiB read buffer instead of tungstenite's 128 KiB,
    // which is kept per call and zero-filled before every read.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let status = resp.status();
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| {
                        String::from_utf8_lossy(b)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                let why = format!("HTTP {status} {body}");
                if status.is_server_error() {
                    ConnectError::Unreachable(why)
                } else {
                    ConnectError::Refused(why)
                }
            }
            other => ConnectError::Unreachable(other.to_string()),
        })?;
    let (mut sink, mut events) = ws.split();
    sink.send(Message::text(session_update(spec).to_string()))
        .await
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    // Wait for the confirmation; `session.created` and anything else the
    // server sends first is not it.
    loop {
        let msg = match events.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                return Err(ConnectError::Refused(format!(
                    "closed before session.updated: {frame:?}"
                )))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::Unreachable(e.to_string())),
            None => {
                return Err(ConnectError::Unreachable(
                    "closed before session.updated".into(),
                ))
            }
        };
        let v: Value = serde_json::from_str(msg.as_str()).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("session.updated") => {
                confirms_pcmu(&v["session"]).map_err(ConnectError::Refused)?;
                break;
            }
            Some("error") => {
                return Err(ConnectError::Refused(format!(
                    "{} {}",
                    v["error"]["code"].as_str().unwrap_or(""),
                    v["error"]["message"].as_str().unwrap_or("")
                )))
            }
            _ => {}
        }
    }
    let (out, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    Ok(Session {
        events,
        last_frame: tokio::time::Instant::now(),
        out,
        writer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_asks_for_mulaw_both_ways_and_server_vad() {
        let spec = SessionSpec {
            url: "wss://x/v1/realtime",
            model: "gpt-realtime",
            api_key: "k",
            voice: "marin",
            instructions: "hola",
            transcription_model: "",
            tools: vec![],
        };
        let u = session_update(&spec);
        assert_eq!(u["session"]["type"], "realtime");
        assert_eq!(
            u["session"]["audio"]["input"]["format"],
            json!({"type": "audio/pcmu"})
        );
        assert_eq!(
            u["session"]["audio"]["output"]["format"],
            json!({"type": "audio/pcmu"})
        );
        assert!(u["session"]["audio"]["input"]["format"]
            .get("rate")
            .is_none());
        let vad = &u["session"]["audio"]["input"]["turn_detection"];
        assert_eq!(vad["type"], "server_vad");
        assert_eq!(vad["interrupt_response"], true);
        assert!(u["session"]["audio"]["input"]
            .get("transcription")
            .is_none());
        assert!(confirms_pcmu(&u["session"]).is_ok());
        let mut pcm = u["session"].clone();
        pcm["audio"]["output"]["format"] = json!({"type": "audio/pcm", "rate": 24000});
        assert!(confirms_pcmu(&pcm).unwrap_err().contains("audio/pcm"));
    }

    #[test]
    fn server_events_are_read_leniently() {
        assert_eq!(
            parse(
                r#"{"type":"response.output_audio.delta","item_id":"i1","content_index":0,"delta":"AAEC"}"#
            ),
            ServerEvent::Audio {
                item_id: "i1".into(),
                audio: vec![0, 1, 2]
            }
        );
        assert!(matches!(parse("{oops"), ServerEvent::Other(_)));
        assert!(matches!(
            parse(r#"{"type":"response.output_audio.delta","delta":"%%%"}"#),
            ServerEvent::Other(_)
        ));
        assert_eq!(
            parse(
                r#"{"type":"error","error":{"code":"response_cancel_not_active","message":"x"}}"#
            ),
            ServerEvent::Error {
                code: "response_cancel_not_active".into(),
                message: "x".into()
            }
        );
        let done = parse(
            r#"{"type":"response.done","response":{"id":"r1","status":"completed","usage":{"input_tokens":12,"output_tokens":34},
                "output":[{"type":"function_call","call_id":"c1","name":"finalizar_llamada","arguments":"{}"}]}}"#,
        );
        assert_eq!(
            done,
            ServerEvent::ResponseDone {
                id: "r1".into(),
                status: "completed".into(),
                tokens_in: 12,
                tokens_out: 34,
                calls: vec![("c1".into(), "finalizar_llamada".into(), "{}".into())]
            }
        );
    }
}
