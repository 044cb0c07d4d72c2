//! The fake OpenAI Realtime server (`overdue_dialer::realtime_sim`) seen
//! from a plain tokio-tungstenite client: it must speak the GA protocol and
//! refuse what the real service refuses, because the voice agent's tests
//! will trust it in place of OpenAI.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use overdue_dialer::realtime_sim::g711::{is_pattern_ulaw, pattern_ulaw, silence_ulaw, tone_ulaw};
use overdue_dialer::realtime_sim::{FakeConfig, FakeRealtime, DEFAULT_MODEL, TOOLS};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

fn fast() -> FakeConfig {
    FakeConfig {
        response_audio_ms: 400,
        ..FakeConfig::default()
    }
}

async fn dial(
    fake: &FakeRealtime,
    key: Option<&str>,
    beta: bool,
    model: &str,
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("{}?model={model}", fake.url())
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {key}").parse().unwrap());
    }
    if beta {
        req.headers_mut()
            .insert("OpenAI-Beta", "realtime=v1".parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn connect(fake: &FakeRealtime) -> Ws {
    let key = fake.config().api_key.clone();
    dial(fake, Some(&key), false, DEFAULT_MODEL).await.unwrap()
}

/// The next server event (panics after `WAIT` or if the socket ends).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no server event in time")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(f) => panic!("socket closed: {f:?}"),
            _ => {}
        }
    }
}

/// Server events up to and including the first of type `kind`.
async fn until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let ev = recv(ws).await;
        let done = ev["type"] == kind;
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

async fn send(ws: &mut Ws, ev: Value) {
    ws.send(Message::text(ev.to_string())).await.unwrap();
}

async fn append(ws: &mut Ws, ulaw: &[u8]) {
    send(
        ws,
        json!({ "type": "input_audio_buffer.append", "audio": B64.encode(ulaw) }),
    )
    .await;
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The voice agent's session (spec §9), μ-law both ways.
fn agent_session(tools: Value) -> Value {
    json!({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": "Eres un asistente de cobranza.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": { "type": "audio/pcmu" },
                    "turn_detection": {
                        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                        "silence_duration_ms": 500, "create_response": true, "interrupt_response": true
                    },
                    "transcription": { "model": "gpt-4o-mini-transcribe" }
                },
                "output": { "format": { "type": "audio/pcmu" }, "voice": "marin" }
            },
            "tools": tools,
            "tool_choice": "auto"
        }
    })
}

fn tool_decls() -> Value {
    Value::Array(
        TOOLS
            .iter()
            .map(|name| {
                json!({ "type": "function", "name": name, "description": "…",
                        "parameters": { "type": "object", "properties": {} } })
            })
            .collect(),
    )
}

/// Connected, `session.created` read, the agent's session confirmed.
async fn configured(fake: &FakeRealtime) -> Ws {
    let mut ws = connect(fake).await;
    let created = recv(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    send(&mut ws, agent_session(tool_decls())).await;
    let updated = recv(&mut ws).await;
    assert_eq!(updated["type"], "session.updated", "{updated}");
    ws
}

/// A caller's utterance: 300 ms of a loud tone, then 600 ms of silence.
async fn say_something(ws: &mut Ws) {
    append(ws, &tone_ulaw(300, 440, 8000.0)).await;
    append(ws, &silence_ulaw(600)).await;
}

fn delta_bytes(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_audio.delta")
        .flat_map(|e| B64.decode(e["delta"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn the_beta_header_is_refused_with_beta_api_shape_disabled() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let key = fake.config().api_key.clone();
    let mut ws = dial(&fake, Some(&key), true, DEFAULT_MODEL).await.unwrap();
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "error");
    assert_eq!(ev["error"]["type"], "invalid_request_error");
    assert_eq!(ev["error"]["code"], "beta_api_shape_disabled");
    assert!(ev["error"]["message"].as_str().unwrap().len() > 10);
    // Then the server closes.
    let end = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{end:?}");
    let rec = fake.wait_for(0, WAIT, |c| !c.open).await.unwrap();
    assert!(rec.beta_refused);
    assert!(!rec.sent.contains(&"session.created".to_string()));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_on_the_upgrade() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    for key in [None, Some("sk-wrong")] {
        match dial(&fake, key, false, DEFAULT_MODEL).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["type"], "invalid_request_error");
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    assert_eq!(fake.attempts(), 2);
    assert_eq!(fake.refused(), 2);
    assert_eq!(fake.connections(), 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn an_unknown_model_gets_an_error_event() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let key = fake.config().api_key.clone();
    let mut ws = dial(&fake, Some(&key), false, "gpt-nonexistent")
        .await
        .unwrap();
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "error");
    assert_eq!(ev["error"]["code"], "model_not_found");
    fake.shutdown().await;
}

#[tokio::test]
async fn refuse_all_answers_503() {
    let fake = FakeRealtime::start(FakeConfig {
        refuse_all: true,
        ..fast()
    })
    .await
    .unwrap();
    let key = fake.config().api_key.clone();
    match dial(&fake, Some(&key), false, DEFAULT_MODEL).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn session_update_with_pcmu_is_confirmed_as_pcmu() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = connect(&fake).await;
    let created = recv(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    assert_eq!(created["session"]["type"], "realtime");
    assert_eq!(created["session"]["object"], "realtime.session");
    send(&mut ws, agent_session(tool_decls())).await;
    let updated = recv(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    let s = &updated["session"];
    assert_eq!(
        s["audio"]["input"]["format"],
        json!({ "type": "audio/pcmu" })
    );
    assert_eq!(
        s["audio"]["output"]["format"],
        json!({ "type": "audio/pcmu" })
    );
    assert_eq!(s["audio"]["output"]["voice"], "marin");
    assert_eq!(s["instructions"], "Eres un asistente de cobranza.");
    assert_eq!(s["tools"].as_array().unwrap().len(), 3);
    assert_eq!(
        s["audio"]["input"]["turn_detection"]["silence_duration_ms"],
        500
    );
    let rec = fake.conn(0).unwrap();
    assert_eq!(rec.sessions.len(), 2);
    assert_eq!(rec.sessions[1], *s);
    assert_eq!(rec.events[0].kind, "session.update");
    fake.shutdown().await;
}

#[tokio::test]
async fn pcm_without_its_rate_and_beta_shaped_sessions_are_errors() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        json!({ "type": "session.update", "event_id": "evt_1", "session": { "type": "realtime",
            "audio": { "output": { "format": { "type": "audio/pcm" } } } } }),
    )
    .await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "error", "{ev}");
    assert_eq!(ev["error"]["type"], "invalid_request_error");
    assert_eq!(ev["error"]["param"], "session.audio.output.format.rate");
    assert_eq!(ev["error"]["event_id"], "evt_1");
    // The beta's flat format field.
    send(
        &mut ws,
        json!({ "type": "session.update", "session": { "type": "realtime", "input_audio_format": "g711_ulaw" } }),
    )
    .await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["error"]["code"], "unknown_parameter");
    // With its rate, PCM is fine, and the socket stayed open throughout.
    send(
        &mut ws,
        json!({ "type": "session.update", "session": { "type": "realtime",
            "audio": { "output": { "format": { "type": "audio/pcm", "rate": 24000 } } } } }),
    )
    .await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "session.updated");
    assert_eq!(ev["session"]["audio"]["output"]["format"]["rate"], 24000);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_knob_makes_the_server_confirm_another_output_format() {
    let fake = FakeRealtime::start(FakeConfig {
        confirm_output_format: Some("audio/pcm".into()),
        ..fast()
    })
    .await
    .unwrap();
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(&mut ws, agent_session(tool_decls())).await;
    let ev = recv(&mut ws).await;
    assert_eq!(
        ev["session"]["audio"]["output"]["format"],
        json!({ "type": "audio/pcm", "rate": 24000 })
    );
    assert_eq!(
        ev["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn appended_audio_arrives_intact_and_in_order() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = configured(&fake).await;
    let chunks: Vec<Vec<u8>> = (0..5u8)
        .map(|k| (0..=255u8).map(|b| b.wrapping_add(k * 7)).collect())
        .collect();
    for c in &chunks {
        append(&mut ws, c).await;
    }
    let want: Vec<u8> = chunks.concat();
    let rec = fake
        .wait_for(0, WAIT, |c| c.audio_in.len() >= want.len())
        .await
        .unwrap();
    assert_eq!(rec.audio_in, want);
    assert_eq!(rec.events_of("input_audio_buffer.append").len(), 5);
    fake.shutdown().await;
}

#[tokio::test]
async fn speech_then_silence_commits_and_answers_with_the_known_pattern() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = configured(&fake).await;
    say_something(&mut ws).await;
    let events = until(&mut ws, "response.done").await;
    let t = types(&events);
    let pos = |k: &str| {
        t.iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {t:?}"))
    };
    assert!(pos("input_audio_buffer.speech_started") < pos("input_audio_buffer.speech_stopped"));
    assert!(pos("input_audio_buffer.speech_stopped") < pos("input_audio_buffer.committed"));
    assert!(pos("input_audio_buffer.committed") < pos("response.created"));
    assert!(pos("response.created") < pos("response.output_item.added"));
    assert!(pos("response.output_item.added") < pos("response.content_part.added"));
    assert!(pos("response.content_part.added") < pos("response.output_audio.delta"));
    assert!(pos("response.output_audio.done") < pos("response.output_audio_transcript.done"));
    assert!(pos("response.output_audio_transcript.done") < pos("response.content_part.done"));
    assert!(pos("response.content_part.done") < pos("response.output_item.done"));

    let started = &events[pos("input_audio_buffer.speech_started")];
    assert_eq!(started["audio_start_ms"], 0);
    let item_id = started["item_id"].as_str().unwrap();
    let stopped = &events[pos("input_audio_buffer.speech_stopped")];
    assert_eq!(stopped["item_id"], item_id);
    assert_eq!(stopped["audio_end_ms"], 300 + 500);
    assert_eq!(
        events[pos("input_audio_buffer.committed")]["item_id"],
        item_id
    );

    // The session asked for input transcription: the caller's words come
    // once the turn is committed.
    let heard = &events[pos("conversation.item.input_audio_transcription.completed")];
    assert!(
        pos("input_audio_buffer.committed")
            < pos("conversation.item.input_audio_transcription.completed")
    );
    assert_eq!(heard["item_id"], item_id);
    assert_eq!(
        heard["transcript"],
        fake.config().caller_transcript.as_str()
    );

    let audio = delta_bytes(&events);
    assert_eq!(audio.len(), 400 * 8);
    assert_eq!(audio, pattern_ulaw(audio.len()));
    let delta = &events[pos("response.output_audio.delta")];
    let rid = events[pos("response.created")]["response"]["id"].clone();
    assert_eq!(delta["response_id"], rid);
    assert_eq!(delta["output_index"], 0);
    assert_eq!(delta["content_index"], 0);
    assert_eq!(
        delta["item_id"],
        events[pos("response.output_item.added")]["item"]["id"]
    );
    assert_eq!(
        events[pos("response.output_audio_transcript.done")]["transcript"],
        fake.config().transcript.as_str()
    );
    let done = &events[pos("response.done")]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["id"], rid);
    for k in ["total_tokens", "input_tokens", "output_tokens"] {
        assert!(done["usage"][k].as_u64().unwrap() > 0, "usage.{k}");
    }
    let u = &done["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap())
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn talking_over_a_response_stops_its_audio() {
    let fake = FakeRealtime::start(FakeConfig {
        response_audio_ms: 3000,
        ..fast()
    })
    .await
    .unwrap();
    let mut ws = configured(&fake).await;
    say_something(&mut ws).await;
    let mut before = until(&mut ws, "response.output_audio.delta").await;
    before.extend(until(&mut ws, "response.output_audio.delta").await);
    // The caller talks over the answer.
    append(&mut ws, &tone_ulaw(100, 440, 8000.0)).await;
    let mut after_barge = Vec::new();
    loop {
        let ev = recv(&mut ws).await;
        if ev["type"] == "input_audio_buffer.speech_started" {
            break;
        }
        after_barge.push(ev);
    }
    before.extend(after_barge);
    let heard = delta_bytes(&before);
    assert!(is_pattern_ulaw(&heard));
    assert!(heard.len() < 3000 * 8);
    // After speech_started: no more audio, and the response ends cancelled.
    let rest = until(&mut ws, "response.done").await;
    assert!(
        !types(&rest).contains(&"response.output_audio.delta"),
        "{:?}",
        types(&rest)
    );
    let done = &rest.last().unwrap()["response"];
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["status_details"]["reason"], "turn_detected");
    // Nothing more comes while the caller keeps talking.
    append(&mut ws, &tone_ulaw(200, 440, 8000.0)).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "unexpected event: {quiet:?}");
    // The server already cancelled it, so cancelling again is refused.
    send(&mut ws, json!({ "type": "response.cancel" })).await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["error"]["code"], "response_cancel_not_active");
    fake.shutdown().await;
}

#[tokio::test]
async fn with_the_knob_a_talked_over_response_waits_for_the_clients_cancel() {
    let fake = FakeRealtime::start(FakeConfig {
        response_audio_ms: 3000,
        barge_in_cancels: false,
        ..fast()
    })
    .await
    .unwrap();
    let mut ws = configured(&fake).await;
    say_something(&mut ws).await;
    until(&mut ws, "response.output_audio.delta").await;
    append(&mut ws, &tone_ulaw(100, 440, 8000.0)).await;
    until(&mut ws, "input_audio_buffer.speech_started").await;
    // Silent, but still active.
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "unexpected event: {quiet:?}");
    send(&mut ws, json!({ "type": "response.cancel" })).await;
    let rest = until(&mut ws, "response.done").await;
    assert!(!types(&rest).contains(&"response.output_audio.delta"));
    let done = &rest.last().unwrap()["response"];
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["status_details"]["reason"], "client_cancelled");
    fake.shutdown().await;
}

#[tokio::test]
async fn response_cancel_ends_a_response_in_progress() {
    let fake = FakeRealtime::start(FakeConfig {
        response_audio_ms: 3000,
        ..fast()
    })
    .await
    .unwrap();
    let mut ws = configured(&fake).await;
    send(&mut ws, json!({ "type": "response.create" })).await;
    until(&mut ws, "response.output_audio.delta").await;
    send(&mut ws, json!({ "type": "response.cancel" })).await;
    let rest = until(&mut ws, "response.done").await;
    let done = &rest.last().unwrap()["response"];
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["status_details"]["reason"], "client_cancelled");
    assert_eq!(done["output"][0]["status"], "incomplete");
    fake.shutdown().await;
}

#[tokio::test]
async fn response_cancel_without_a_response_is_an_error_and_the_socket_stays_open() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = configured(&fake).await;
    send(&mut ws, json!({ "type": "response.cancel" })).await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "error");
    assert_eq!(ev["error"]["type"], "invalid_request_error");
    assert_eq!(ev["error"]["code"], "response_cancel_not_active");
    // Still open, still serving.
    send(&mut ws, agent_session(tool_decls())).await;
    assert_eq!(recv(&mut ws).await["type"], "session.updated");
    assert!(fake.conn(0).unwrap().open);
    fake.shutdown().await;
}

#[tokio::test]
async fn unknown_client_events_are_errors_and_the_socket_stays_open() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = configured(&fake).await;
    send(
        &mut ws,
        json!({ "type": "response.audio.delta", "event_id": "e9" }),
    )
    .await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "error");
    assert_eq!(ev["error"]["type"], "invalid_request_error");
    assert_eq!(ev["error"]["param"], "type");
    assert_eq!(ev["error"]["event_id"], "e9");
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "error");
    send(&mut ws, json!({ "type": "response.cancel" })).await;
    assert_eq!(
        recv(&mut ws).await["error"]["code"],
        "response_cancel_not_active"
    );
    let rec = fake.conn(0).unwrap();
    let kinds: Vec<&str> = rec.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session.update",
            "response.audio.delta",
            "",
            "response.cancel"
        ]
    );
    assert_eq!(rec.errors.len(), 3);
    fake.shutdown().await;
}

#[tokio::test]
async fn truncate_within_the_audio_is_accepted_and_beyond_it_refused() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = configured(&fake).await;
    send(&mut ws, json!({ "type": "response.create" })).await;
    let events = until(&mut ws, "response.done").await;
    let item_id = events
        .iter()
        .find(|e| e["type"] == "response.output_item.added")
        .unwrap()["item"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // 400 ms of μ-law: 3200 bytes, 8 per ms.
    let truncate = |ms: u64, id: &str| json!({ "type": "conversation.item.truncate", "item_id": id, "content_index": 0, "audio_end_ms": ms });
    send(&mut ws, truncate(401, &item_id)).await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "error", "{ev}");
    assert_eq!(ev["error"]["param"], "audio_end_ms");
    send(&mut ws, truncate(150, &item_id)).await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "conversation.item.truncated", "{ev}");
    assert_eq!(ev["item_id"], item_id.as_str());
    assert_eq!(ev["audio_end_ms"], 150);
    assert_eq!(ev["content_index"], 0);
    // Now the item holds 150 ms.
    send(&mut ws, truncate(200, &item_id)).await;
    assert_eq!(recv(&mut ws).await["type"], "error");
    send(&mut ws, truncate(10, "item_nope")).await;
    let ev = recv(&mut ws).await;
    assert_eq!(ev["type"], "error");
    assert_eq!(ev["error"]["param"], "item_id");
    let rec = fake.conn(0).unwrap();
    assert_eq!(rec.truncations.len(), 1);
    assert_eq!(rec.truncations[0].audio_end_ms, 150);
    assert_eq!(rec.truncations[0].item_audio_ms, 400);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_tool_call_then_its_output_then_a_spoken_answer() {
    let fake = FakeRealtime::start(FakeConfig {
        tool_call_done_delay: Duration::from_millis(300),
        ..fast()
    })
    .await
    .unwrap();
    let args = r#"{"fecha":"2025-07-01","monto":50000}"#;
    fake.next_response_calls_tool("registrar_promesa_de_pago", args);
    let mut ws = configured(&fake).await;
    say_something(&mut ws).await;
    let events = until(&mut ws, "response.function_call_arguments.done").await;
    let added = events
        .iter()
        .find(|e| e["type"] == "response.output_item.added")
        .unwrap();
    assert_eq!(added["item"]["type"], "function_call");
    assert_eq!(added["item"]["name"], "registrar_promesa_de_pago");
    assert!(types(&events).contains(&"response.function_call_arguments.delta"));
    let done = events.last().unwrap();
    assert_eq!(done["arguments"], args);
    let call_id = done["call_id"].as_str().unwrap().to_string();
    assert_eq!(added["item"]["call_id"], call_id.as_str());
    assert!(!types(&events).contains(&"response.output_audio.delta"));

    // Too early: the response is not done yet.
    let output = |id: &str| {
        json!({ "type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": id, "output": "{\"ok\":true}" } })
    };
    send(&mut ws, output(&call_id)).await;
    let rest = until(&mut ws, "response.done").await;
    let err = rest.iter().find(|e| e["type"] == "error").expect("refusal");
    assert_eq!(err["error"]["param"], "item.call_id");
    assert_eq!(rest.last().unwrap()["response"]["status"], "completed");
    assert_eq!(
        rest.last().unwrap()["response"]["output"][0]["arguments"],
        args
    );

    // An unknown call is refused too.
    send(&mut ws, output("call_nope")).await;
    assert_eq!(recv(&mut ws).await["type"], "error");

    // In time: accepted and recorded.
    send(&mut ws, output(&call_id)).await;
    let ack = until(&mut ws, "conversation.item.done").await;
    assert_eq!(ack[0]["type"], "conversation.item.added");
    assert_eq!(ack[0]["item"]["call_id"], call_id.as_str());
    let rec = fake.conn(0).unwrap();
    assert_eq!(rec.function_outputs.len(), 1);
    assert_eq!(rec.function_outputs[0].name, "registrar_promesa_de_pago");
    assert_eq!(rec.function_outputs[0].output, "{\"ok\":true}");

    // Then the model speaks.
    send(&mut ws, json!({ "type": "response.create" })).await;
    let answer = until(&mut ws, "response.done").await;
    let audio = delta_bytes(&answer);
    assert_eq!(audio.len(), 400 * 8);
    assert!(is_pattern_ulaw(&audio));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_scripted_tool_the_session_did_not_declare_is_not_called() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    fake.next_response_calls_tool("finalizar_llamada", "{}");
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(&mut ws, agent_session(json!([]))).await;
    recv(&mut ws).await;
    send(&mut ws, json!({ "type": "response.create" })).await;
    let events = until(&mut ws, "response.done").await;
    assert!(types(&events).contains(&"response.output_audio.delta"));
    assert_eq!(fake.conn(0).unwrap().notes.len(), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn the_handshake_delay_is_honoured() {
    let fake = FakeRealtime::start(FakeConfig {
        handshake_delay: Duration::from_millis(500),
        ..fast()
    })
    .await
    .unwrap();
    // A client with a 150 ms connect timeout gives up.
    let quick = tokio::time::timeout(Duration::from_millis(150), connect(&fake)).await;
    assert!(quick.is_err());
    // A patient one gets through, no sooner than the delay.
    let t0 = Instant::now();
    let mut ws = connect(&fake).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(recv(&mut ws).await["type"], "session.created");
    fake.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_clients() {
    let fake = FakeRealtime::start(fast()).await.unwrap();
    let mut ws = configured(&fake).await;
    fake.shutdown().await;
    let end = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(
        matches!(end, Some(Ok(Message::Close(_))) | None | Some(Err(_))),
        "{end:?}"
    );
}
