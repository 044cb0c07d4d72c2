//! One Realtime session over one WebSocket: the client's events in, the
//! server's events out, the fake's VAD on the caller's audio, and the
//! response in progress, stepped on a timer so that a test can talk over
//! it, cancel it or answer a tool call too early.
//!
//! Everything for one connection happens on one task, so the state needs
//! no locks; only the records shared with the test go through `Shared`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::g711;
use super::session::{self, ApiError, Format};
use super::{ClientEvent, FunctionOutput, Script, Shared, TimedAppend, TimedDelta, Truncation};

/// The VAD's frame, as the spec describes it.
const FRAME_MS: u64 = 20;

/// What the client may send (GA client events), for the error on others.
const CLIENT_EVENTS: &str = "'session.update', 'input_audio_buffer.append', 'input_audio_buffer.commit', 'input_audio_buffer.clear', 'conversation.item.create', 'conversation.item.retrieve', 'conversation.item.truncate', 'conversation.item.delete', 'response.create', 'response.cancel', and 'output_audio_buffer.clear'";

enum ItemKind {
    /// An assistant message; how much audio it holds now.
    Assistant {
        audio_bytes: usize,
        format: Format,
    },
    Other,
}

struct Item {
    json: Value,
    kind: ItemKind,
}

struct Call {
    name: String,
    /// Its response has sent `response.done`.
    done: bool,
}

enum Body {
    Audio {
        audio: Vec<u8>,
        sent: usize,
        chunk: usize,
    },
    Tool {
        name: String,
        call_id: String,
        arguments: String,
        /// 0: arguments not sent yet; 1: sent, `response.done` pending.
        step: u8,
    },
}

struct Active {
    id: String,
    item_id: String,
    format: Format,
    body: Body,
    next_at: Instant,
    /// Talked over and waiting for the client's `response.cancel`.
    paused: bool,
}

enum Done {
    Completed,
    Cancelled(&'static str),
}

struct Speech {
    item_id: String,
    silence_ms: u64,
}

struct Conn {
    shared: Arc<Shared>,
    id: usize,
    session: Value,
    ids: u64,
    events: u64,
    out: Vec<Value>,
    /// Input bytes short of a whole VAD frame.
    carry: Vec<u8>,
    /// Input audio received so far (whole frames), in ms.
    in_ms: u64,
    /// Input bytes not yet committed.
    buffer_bytes: usize,
    speech: Option<Speech>,
    items: HashMap<String, Item>,
    order: Vec<String>,
    calls: HashMap<String, Call>,
    active: Option<Active>,
    /// The model has answered with audio (the voice is then fixed).
    spoke: bool,
    /// When the client event being handled came off the socket.
    arrived: std::time::Instant,
}

pub async fn run(
    mut ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    id: usize,
    model: String,
    mut stop: watch::Receiver<bool>,
) {
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    let session = session::initial(&format!("sess_c{id}"), &model, expires_at);
    let mut c = Conn {
        shared,
        id,
        session,
        ids: 0,
        events: 0,
        out: Vec::new(),
        carry: Vec::new(),
        in_ms: 0,
        buffer_bytes: 0,
        speech: None,
        items: HashMap::new(),
        order: Vec::new(),
        calls: HashMap::new(),
        active: None,
        spoke: false,
        arrived: std::time::Instant::now(),
    };
    c.shared
        .with_conn(id, |r| r.sessions.push(c.session.clone()));
    let created = json!({ "type": "session.created", "session": c.session });
    c.emit(created);
    if c.flush(&mut ws).await.is_err() {
        return;
    }
    loop {
        let tick = c.active.as_ref().filter(|a| !a.paused).map(|a| a.next_at);
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    c.arrived = std::time::Instant::now();
                    c.on_text(text.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    c.record(String::new(), Value::String("<binary frame>".into()));
                    c.error(ApiError::new("invalid_value", "Binary frames are not supported; send JSON text events.", None), None);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep_until(tick.unwrap_or_else(Instant::now)), if tick.is_some() => c.step(),
            _ = stop.changed() => {
                let _ = ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "".into() })).await;
                return;
            }
        }
        if c.flush(&mut ws).await.is_err() {
            break;
        }
    }
}

impl Conn {
    fn cfg(&self) -> &super::FakeConfig {
        &self.shared.cfg
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.ids += 1;
        format!("{prefix}_c{}n{}", self.id, self.ids)
    }

    fn emit(&mut self, mut event: Value) {
        self.events += 1;
        event["event_id"] = json!(format!("event_c{}n{}", self.id, self.events));
        self.out.push(event);
    }

    fn error(&mut self, e: ApiError, event_id: Option<String>) {
        let error = json!({
            "type": "invalid_request_error",
            "code": e.code,
            "message": e.message,
            "param": e.param,
            "event_id": event_id,
        });
        self.emit(json!({ "type": "error", "error": error }));
    }

    async fn flush(&mut self, ws: &mut WebSocketStream<TcpStream>) -> Result<(), ()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        self.shared.with_conn(self.id, |r| {
            // The batch is written right after this, back to back.
            let at = std::time::Instant::now();
            for ev in &out {
                let kind = ev["type"].as_str().unwrap_or_default();
                match kind {
                    "error" => r.errors.push(ev["error"].clone()),
                    "response.output_audio.delta" => r.deltas.push(TimedDelta {
                        at,
                        item_id: ev["item_id"].as_str().unwrap_or_default().to_string(),
                        bytes: base64_len(ev["delta"].as_str().unwrap_or_default()),
                    }),
                    "input_audio_buffer.speech_started" => r.speech_started.push(at),
                    _ => {}
                }
                r.sent.push(kind.to_string());
            }
        });
        for ev in out {
            ws.feed(Message::text(ev.to_string()))
                .await
                .map_err(|_| ())?;
        }
        ws.flush().await.map_err(|_| ())
    }

    fn record(&self, kind: String, json: Value) {
        self.shared
            .with_conn(self.id, |r| r.events.push(ClientEvent { kind, json }));
    }

    fn note(&self, text: String) {
        self.shared.with_conn(self.id, |r| r.notes.push(text));
    }

    fn on_text(&mut self, text: &str) {
        let ev: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.record(String::new(), Value::String(text.into()));
                let msg = format!("We could not parse the JSON body of your request: {e}");
                self.error(ApiError::new("invalid_json", msg, None), None);
                return;
            }
        };
        let kind = ev["type"].as_str().unwrap_or_default().to_string();
        let event_id = ev["event_id"].as_str().map(str::to_string);
        self.record(kind.clone(), ev.clone());
        let result = if !ev.is_object() {
            Err(ApiError::new(
                "invalid_type",
                "A client event must be a JSON object.",
                None,
            ))
        } else {
            match kind.as_str() {
                "session.update" => self.session_update(&ev),
                "input_audio_buffer.append" => self.append(&ev),
                "input_audio_buffer.commit" => self.commit(),
                "input_audio_buffer.clear" => {
                    self.clear();
                    Ok(())
                }
                "conversation.item.create" => self.item_create(&ev),
                "conversation.item.truncate" => self.truncate(&ev),
                "conversation.item.delete" => self.item_delete(&ev),
                "conversation.item.retrieve" => self.item_retrieve(&ev),
                "response.create" => self.response_create(&ev),
                "response.cancel" => self.response_cancel(&ev),
                // Only WebRTC and SIP have an output buffer on the server.
                "output_audio_buffer.clear" => Err(ApiError::new(
                    "invalid_value",
                    "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
                    Some("type"),
                )),
                "" => Err(ApiError::new(
                    "missing_required_parameter",
                    "Missing required parameter: 'type'.",
                    Some("type"),
                )),
                other => Err(ApiError::new(
                    "invalid_value",
                    format!("Invalid value: '{other}'. Supported values are: {CLIENT_EVENTS}."),
                    Some("type"),
                )),
            }
        };
        if let Err(e) = result {
            self.error(e, event_id);
        }
    }

    fn session_update(&mut self, ev: &Value) -> Result<(), ApiError> {
        let Some(update) = ev.get("session") else {
            return Err(ApiError::new(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                Some("session"),
            ));
        };
        let mut next = session::apply_update(&self.session, update, self.spoke)?;
        if let Some(f) = self
            .cfg()
            .confirm_output_format
            .as_deref()
            .and_then(Format::from_type)
        {
            next["audio"]["output"]["format"] = f.to_json();
        }
        if session::format_of(&next, "input") != session::format_of(&self.session, "input") {
            // A frame split across two formats means nothing.
            self.carry.clear();
        }
        self.session = next;
        self.shared
            .with_conn(self.id, |r| r.sessions.push(self.session.clone()));
        let updated = json!({ "type": "session.updated", "session": self.session });
        self.emit(updated);
        Ok(())
    }

    fn append(&mut self, ev: &Value) -> Result<(), ApiError> {
        let audio = match ev.get("audio") {
            None => {
                return Err(ApiError::new(
                    "missing_required_parameter",
                    "Missing required parameter: 'audio'.",
                    Some("audio"),
                ))
            }
            Some(a) => a.as_str().ok_or_else(|| {
                ApiError::new(
                    "invalid_type",
                    "Invalid type for 'audio': expected a base64 string.",
                    Some("audio"),
                )
            })?,
        };
        let bytes = B64.decode(audio).map_err(|_| {
            ApiError::new(
                "invalid_value",
                "Invalid value for 'audio': not valid base64.",
                Some("audio"),
            )
        })?;
        let arrived = self.arrived;
        self.shared.with_conn(self.id, |r| {
            let start = r.audio_in.len();
            r.audio_in.extend_from_slice(&bytes);
            r.appends.push(TimedAppend {
                at: arrived,
                audio: start..r.audio_in.len(),
            });
        });
        self.buffer_bytes += bytes.len();
        self.carry.extend_from_slice(&bytes);
        let format = session::format_of(&self.session, "input");
        let frame = format.bytes_per_ms() * FRAME_MS as usize;
        while self.carry.len() >= frame {
            let f: Vec<u8> = self.carry.drain(..frame).collect();
            self.frame(&f, format);
        }
        Ok(())
    }

    /// One VAD frame. Time is audio time (the ms of audio received), not
    /// the wall clock, so a test may send a whole utterance at once.
    fn frame(&mut self, bytes: &[u8], format: Format) {
        let start = self.in_ms;
        self.in_ms += FRAME_MS;
        let Some(vad) = session::vad_of(&self.session) else {
            return;
        };
        let loud = g711::rms(&format.decode(bytes)) >= self.cfg().vad_threshold;
        match self.speech.as_mut() {
            None if loud => {
                let item_id = self.new_id("item");
                self.emit(json!({
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": start.saturating_sub(vad.prefix_padding_ms),
                    "item_id": item_id,
                }));
                self.speech = Some(Speech {
                    item_id,
                    silence_ms: 0,
                });
                if vad.interrupt_response {
                    if let Some(mut active) = self.active.take() {
                        if self.cfg().barge_in_cancels {
                            self.finish(active, Done::Cancelled("turn_detected"));
                        } else {
                            active.paused = true;
                            self.active = Some(active);
                        }
                    }
                }
            }
            None => {}
            Some(s) if loud => s.silence_ms = 0,
            Some(s) => {
                s.silence_ms += FRAME_MS;
                if s.silence_ms >= vad.silence_duration_ms {
                    let item_id = s.item_id.clone();
                    self.speech = None;
                    self.emit(json!({
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": self.in_ms,
                        "item_id": item_id,
                    }));
                    self.commit_item(item_id.clone());
                    if vad.create_response && self.active.is_none() {
                        self.start_response();
                    }
                    self.transcribe(&item_id);
                }
            }
        }
    }

    fn previous_item(&self) -> Value {
        self.order.last().map_or(Value::Null, |id| json!(id))
    }

    fn add_item(&mut self, item: Value, kind: ItemKind, done: bool) {
        let previous = self.previous_item();
        let id = item["id"].as_str().unwrap_or_default().to_string();
        self.emit(json!({ "type": "conversation.item.added", "previous_item_id": previous, "item": item }));
        if done {
            self.emit(json!({ "type": "conversation.item.done", "previous_item_id": previous, "item": item }));
        }
        self.order.push(id.clone());
        self.items.insert(id, Item { json: item, kind });
    }

    fn commit_item(&mut self, item_id: String) {
        let previous = self.previous_item();
        self.emit(json!({
            "type": "input_audio_buffer.committed",
            "previous_item_id": previous,
            "item_id": item_id,
        }));
        let item = json!({
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{ "type": "input_audio", "transcript": null }],
        });
        self.add_item(item, ItemKind::Other, true);
        self.buffer_bytes = 0;
    }

    fn commit(&mut self) -> Result<(), ApiError> {
        let format = session::format_of(&self.session, "input");
        let ms = self.buffer_bytes / format.bytes_per_ms();
        if ms < 100 {
            return Err(ApiError::new(
                "input_audio_buffer_commit_empty",
                format!("Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has {ms}.00ms of audio."),
                None,
            ));
        }
        let item_id = match self.speech.take() {
            Some(s) => s.item_id,
            None => self.new_id("item"),
        };
        self.commit_item(item_id.clone());
        self.transcribe(&item_id);
        Ok(())
    }

    /// The caller's words, when the session asked for them. The real
    /// service transcribes beside the model, so its transcript comes after
    /// the response has started; clients must not wait for it.
    fn transcribe(&mut self, item_id: &str) {
        if self.session["audio"]["input"]["transcription"].is_null() {
            return;
        }
        let transcript = self.cfg().caller_transcript.clone();
        let seconds = self.in_ms as f64 / 1000.0;
        self.emit(json!({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id,
            "content_index": 0,
            "transcript": transcript,
            "usage": { "type": "duration", "seconds": seconds },
        }));
    }

    fn clear(&mut self) {
        self.buffer_bytes = 0;
        self.carry.clear();
        self.speech = None;
        self.emit(json!({ "type": "input_audio_buffer.cleared" }));
    }

    fn item_create(&mut self, ev: &Value) -> Result<(), ApiError> {
        let Some(item) = ev.get("item").filter(|i| i.is_object()) else {
            return Err(ApiError::new(
                "missing_required_parameter",
                "Missing required parameter: 'item'.",
                Some("item"),
            ));
        };
        let id = match item["id"].as_str() {
            Some(id) if self.items.contains_key(id) => {
                return Err(ApiError::new(
                    "invalid_value",
                    format!("Item with id '{id}' already exists."),
                    Some("item.id"),
                ))
            }
            Some(id) => id.to_string(),
            None => self.new_id("item"),
        };
        let mut stored = item.clone();
        match item["type"].as_str() {
            Some("function_call_output") => {
                let Some(call_id) = item["call_id"].as_str() else {
                    return Err(ApiError::new(
                        "missing_required_parameter",
                        "Missing required parameter: 'item.call_id'.",
                        Some("item.call_id"),
                    ));
                };
                let Some(output) = item["output"].as_str() else {
                    return Err(ApiError::new(
                        "missing_required_parameter",
                        "Missing required parameter: 'item.output' (a string).",
                        Some("item.output"),
                    ));
                };
                let Some(call) = self.calls.get(call_id) else {
                    return Err(ApiError::new(
                        "invalid_value",
                        format!("No function call with call_id '{call_id}' found in the conversation."),
                        Some("item.call_id"),
                    ));
                };
                if !call.done {
                    return Err(ApiError::new(
                        "function_call_not_done",
                        format!("The response with function call '{call_id}' is still in progress; send its output after response.done."),
                        Some("item.call_id"),
                    ));
                }
                let record = FunctionOutput {
                    call_id: call_id.into(),
                    name: call.name.clone(),
                    output: output.into(),
                };
                self.shared
                    .with_conn(self.id, |r| r.function_outputs.push(record));
            }
            Some("message") => {
                if !matches!(item["role"].as_str(), Some("user" | "system" | "assistant")) {
                    return Err(ApiError::new(
                        "invalid_value",
                        "Invalid value for 'item.role': expected 'user', 'system' or 'assistant'.",
                        Some("item.role"),
                    ));
                }
                if !item["content"].is_array() {
                    return Err(ApiError::new(
                        "missing_required_parameter",
                        "Missing required parameter: 'item.content'.",
                        Some("item.content"),
                    ));
                }
            }
            Some("function_call") => {}
            _ => {
                return Err(ApiError::new(
                    "invalid_value",
                    "Invalid value for 'item.type': expected 'message', 'function_call' or 'function_call_output'.",
                    Some("item.type"),
                ))
            }
        }
        stored["id"] = json!(id);
        stored["object"] = json!("realtime.item");
        stored["status"] = json!("completed");
        self.add_item(stored, ItemKind::Other, true);
        Ok(())
    }

    fn truncate(&mut self, ev: &Value) -> Result<(), ApiError> {
        let need = |field: &str| {
            ApiError::new(
                "missing_required_parameter",
                format!("Missing required parameter: '{field}' (expected an integer where it is a number)."),
                Some(field),
            )
        };
        let item_id = ev["item_id"].as_str().ok_or_else(|| need("item_id"))?;
        let content_index = ev["content_index"]
            .as_u64()
            .ok_or_else(|| need("content_index"))?;
        let audio_end_ms = ev["audio_end_ms"]
            .as_u64()
            .ok_or_else(|| need("audio_end_ms"))?;
        let Some(item) = self.items.get_mut(item_id) else {
            return Err(ApiError::new(
                "invalid_value",
                format!("Item with item_id '{item_id}' not found."),
                Some("item_id"),
            ));
        };
        let ItemKind::Assistant {
            audio_bytes,
            format,
        } = &mut item.kind
        else {
            return Err(ApiError::new(
                "invalid_value",
                "Only assistant message items with audio can be truncated.",
                Some("item_id"),
            ));
        };
        if content_index != 0 {
            return Err(ApiError::new(
                "invalid_value",
                format!("Invalid value for 'content_index': the item has no content part {content_index}."),
                Some("content_index"),
            ));
        }
        let have_ms = (*audio_bytes / format.bytes_per_ms()) as u64;
        if audio_end_ms > have_ms {
            return Err(ApiError::new(
                "invalid_value",
                format!("Audio content of {have_ms}ms is already shorter than {audio_end_ms}ms."),
                Some("audio_end_ms"),
            ));
        }
        *audio_bytes = audio_end_ms as usize * format.bytes_per_ms();
        let record = Truncation {
            item_id: item_id.into(),
            content_index,
            audio_end_ms,
            item_audio_ms: have_ms,
        };
        self.shared
            .with_conn(self.id, |r| r.truncations.push(record));
        self.emit(json!({
            "type": "conversation.item.truncated",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }));
        Ok(())
    }

    fn item_delete(&mut self, ev: &Value) -> Result<(), ApiError> {
        let id = ev["item_id"].as_str().unwrap_or_default().to_string();
        if self.items.remove(&id).is_none() {
            return Err(ApiError::new(
                "invalid_value",
                format!("Item with item_id '{id}' not found."),
                Some("item_id"),
            ));
        }
        self.order.retain(|i| *i != id);
        self.emit(json!({ "type": "conversation.item.deleted", "item_id": id }));
        Ok(())
    }

    fn item_retrieve(&mut self, ev: &Value) -> Result<(), ApiError> {
        let id = ev["item_id"].as_str().unwrap_or_default();
        let Some(item) = self.items.get(id) else {
            return Err(ApiError::new(
                "invalid_value",
                format!("Item with item_id '{id}' not found."),
                Some("item_id"),
            ));
        };
        let item = item.json.clone();
        self.emit(json!({ "type": "conversation.item.retrieved", "item": item }));
        Ok(())
    }

    fn response_create(&mut self, ev: &Value) -> Result<(), ApiError> {
        if let Some(active) = &self.active {
            return Err(ApiError::new(
                "conversation_already_has_active_response",
                format!("Conversation already has an active response in progress: {}. Wait until the response is finished before creating a new one.", active.id),
                None,
            ));
        }
        if ev.get("response").is_some_and(|r| !r.is_object()) {
            return Err(ApiError::new(
                "invalid_type",
                "Invalid type for 'response': expected an object.",
                Some("response"),
            ));
        }
        self.start_response();
        Ok(())
    }

    fn response_cancel(&mut self, ev: &Value) -> Result<(), ApiError> {
        let wanted = ev["response_id"].as_str();
        let matches = self
            .active
            .as_ref()
            .is_some_and(|a| wanted.is_none_or(|w| w == a.id));
        match self.active.take() {
            Some(active) if matches => {
                self.finish(active, Done::Cancelled("client_cancelled"));
                Ok(())
            }
            other => {
                self.active = other;
                Err(ApiError::new(
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found.",
                    None,
                ))
            }
        }
    }

    fn response_json(
        &self,
        id: &str,
        status: &str,
        details: Value,
        output: Vec<Value>,
        usage: Value,
    ) -> Value {
        json!({
            "object": "realtime.response",
            "id": id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": format!("conv_c{}", self.id),
            "output_modalities": ["audio"],
            "max_output_tokens": self.session["max_output_tokens"],
            "audio": { "output": {
                "format": self.session["audio"]["output"]["format"],
                "voice": self.session["audio"]["output"]["voice"],
            }},
            "usage": usage,
            "metadata": null,
        })
    }

    fn start_response(&mut self) {
        let response_id = self.new_id("resp");
        let item_id = self.new_id("item");
        let format = session::format_of(&self.session, "output");
        let created = self.response_json(
            &response_id,
            "in_progress",
            Value::Null,
            vec![],
            Value::Null,
        );
        self.emit(json!({ "type": "response.created", "response": created }));
        let now = Instant::now();
        if let Some(Script::ToolCall { name, arguments }) = self.shared.next_script(self.id) {
            if session::tool_names(&self.session).contains(&name) {
                let call_id = self.new_id("call");
                let item = json!({
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "function_call",
                    "status": "in_progress",
                    "name": name,
                    "call_id": call_id,
                    "arguments": "",
                });
                self.emit(json!({ "type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item }));
                self.add_item(item, ItemKind::Other, false);
                self.calls.insert(
                    call_id.clone(),
                    Call {
                        name: name.clone(),
                        done: false,
                    },
                );
                self.active = Some(Active {
                    id: response_id,
                    item_id,
                    format,
                    body: Body::Tool {
                        name,
                        call_id,
                        arguments,
                        step: 0,
                    },
                    next_at: now + self.cfg().chunk_interval,
                    paused: false,
                });
                return;
            }
            self.note(format!(
                "scripted call of '{name}' not made: the session does not declare it; answered with audio"
            ));
        }
        let bpm = format.bytes_per_ms();
        let audio = format.pattern(self.cfg().response_audio_ms as usize * bpm);
        let chunk = (self.cfg().audio_chunk_ms as usize * bpm).max(1);
        let item = json!({
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        });
        self.emit(json!({ "type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item }));
        self.add_item(
            item,
            ItemKind::Assistant {
                audio_bytes: 0,
                format,
            },
            false,
        );
        self.emit(json!({
            "type": "response.content_part.added",
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": { "type": "audio", "transcript": "" },
        }));
        let transcript = self.cfg().transcript.clone();
        self.emit(json!({
            "type": "response.output_audio_transcript.delta",
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": transcript,
        }));
        self.active = Some(Active {
            id: response_id,
            item_id,
            format,
            body: Body::Audio {
                audio,
                sent: 0,
                chunk,
            },
            next_at: now,
            paused: false,
        });
    }

    /// The response's next event(s), when its timer fires.
    fn step(&mut self) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        let (rid, iid) = (a.id.clone(), a.item_id.clone());
        match &mut a.body {
            Body::Audio { audio, sent, chunk } => {
                let end = (*sent + *chunk).min(audio.len());
                let delta = B64.encode(&audio[*sent..end]);
                if let Some(Item {
                    kind: ItemKind::Assistant { audio_bytes, .. },
                    ..
                }) = self.items.get_mut(&iid)
                {
                    *audio_bytes += end - *sent;
                }
                *sent = end;
                self.spoke = true;
                self.emit(json!({
                    "type": "response.output_audio.delta",
                    "response_id": rid,
                    "item_id": iid,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                }));
                if end >= audio.len() {
                    self.finish(a, Done::Completed);
                    return;
                }
                a.next_at += self.cfg().chunk_interval;
            }
            Body::Tool {
                name,
                call_id,
                arguments,
                step,
            } if *step == 0 => {
                self.emit(json!({
                    "type": "response.function_call_arguments.delta",
                    "response_id": rid,
                    "item_id": iid,
                    "output_index": 0,
                    "call_id": call_id,
                    "delta": arguments,
                }));
                self.emit(json!({
                    "type": "response.function_call_arguments.done",
                    "response_id": rid,
                    "item_id": iid,
                    "output_index": 0,
                    "call_id": call_id,
                    "arguments": arguments,
                }));
                let item = function_call_item(&iid, name, call_id, arguments, "completed");
                self.emit(json!({ "type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": item }));
                self.emit(json!({ "type": "conversation.item.done", "item": item }));
                if let Some(stored) = self.items.get_mut(&iid) {
                    stored.json = item;
                }
                *step = 1;
                a.next_at = Instant::now() + self.cfg().tool_call_done_delay;
            }
            Body::Tool { .. } => {
                self.finish(a, Done::Completed);
                return;
            }
        }
        self.active = Some(a);
    }

    /// Ends a response: the done events, then `response.done`.
    fn finish(&mut self, a: Active, done: Done) {
        let (status, details, item_status) = match done {
            Done::Completed => ("completed", Value::Null, "completed"),
            Done::Cancelled(reason) => (
                "cancelled",
                json!({ "type": "cancelled", "reason": reason }),
                "incomplete",
            ),
        };
        let (rid, iid) = (a.id.clone(), a.item_id.clone());
        let mut output_audio_ms = 0;
        let mut output_text = String::new();
        let item = match a.body {
            Body::Audio { sent, .. } => {
                output_audio_ms = sent / a.format.bytes_per_ms();
                let transcript = self.cfg().transcript.clone();
                let ids = json!({ "response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0 });
                let with = |kind: &str, extra: Value| {
                    let mut ev = ids.clone();
                    ev["type"] = json!(kind);
                    if let (Some(ev), Some(extra)) = (ev.as_object_mut(), extra.as_object()) {
                        ev.extend(extra.clone());
                    }
                    ev
                };
                self.emit(with("response.output_audio.done", json!({})));
                self.emit(with(
                    "response.output_audio_transcript.done",
                    json!({ "transcript": transcript }),
                ));
                self.emit(with(
                    "response.content_part.done",
                    json!({ "part": { "type": "audio", "transcript": transcript } }),
                ));
                let item = json!({
                    "id": iid,
                    "object": "realtime.item",
                    "type": "message",
                    "status": item_status,
                    "role": "assistant",
                    "content": [{ "type": "output_audio", "transcript": transcript }],
                });
                self.emit(json!({ "type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": item }));
                self.emit(json!({ "type": "conversation.item.done", "item": item }));
                output_text = transcript;
                item
            }
            Body::Tool {
                name,
                call_id,
                arguments,
                step,
            } => {
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.done = true;
                }
                if step == 0 {
                    // Cut before its arguments: the GA reference says the
                    // done events still come.
                    self.emit(json!({
                        "type": "response.function_call_arguments.done",
                        "response_id": rid,
                        "item_id": iid,
                        "output_index": 0,
                        "call_id": call_id,
                        "arguments": "",
                    }));
                    let item = function_call_item(&iid, &name, &call_id, "", item_status);
                    self.emit(json!({ "type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": item }));
                    self.emit(json!({ "type": "conversation.item.done", "item": item }));
                    item
                } else {
                    output_text = arguments.clone();
                    function_call_item(&iid, &name, &call_id, &arguments, "completed")
                }
            }
        };
        if let Some(stored) = self.items.get_mut(&iid) {
            stored.json = item.clone();
        }
        // Made-up but stable token counts, shaped like the real usage.
        let text_tokens = output_text.split_whitespace().count() as u64;
        let audio_tokens = output_audio_ms as u64 / 50;
        let input_audio = self.in_ms / 100;
        let input_text = 100;
        let usage = json!({
            "total_tokens": input_text + input_audio + text_tokens + audio_tokens,
            "input_tokens": input_text + input_audio,
            "output_tokens": text_tokens + audio_tokens,
            "input_token_details": {
                "text_tokens": input_text,
                "audio_tokens": input_audio,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": { "text_tokens": 0, "audio_tokens": 0, "image_tokens": 0 },
            },
            "output_token_details": { "text_tokens": text_tokens, "audio_tokens": audio_tokens },
        });
        let response = self.response_json(&rid, status, details, vec![item], usage);
        self.emit(json!({ "type": "response.done", "response": response }));
    }
}

/// Decoded length of base64 text (the fake's own, so well formed).
fn base64_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(pad)
}

fn function_call_item(id: &str, name: &str, call_id: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "name": name,
        "call_id": call_id,
        "arguments": arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_length_is_the_decoded_length() {
        for n in 0..10 {
            let b = vec![7u8; n];
            assert_eq!(base64_len(&B64.encode(&b)), n);
        }
    }
}
