//! The GA session object: what `session.created` announces, how
//! `session.update` is checked (the GA shape only; the beta's flat fields
//! such as `input_audio_format` are refused the way the real service
//! refuses them) and merged, and the parts of it the fake acts on.

use serde_json::{json, Map, Value};

/// An error the fake answers with an `error` event (`invalid_request_error`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            code,
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    fn unknown(param: &str) -> Self {
        ApiError::new(
            "unknown_parameter",
            format!("Unknown parameter: '{param}'."),
            Some(param),
        )
    }

    fn missing(param: &str) -> Self {
        ApiError::new(
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
            Some(param),
        )
    }

    fn invalid(param: &str, why: impl std::fmt::Display) -> Self {
        ApiError::new(
            "invalid_value",
            format!("Invalid value for '{param}': {why}."),
            Some(param),
        )
    }

    fn wrong_type(param: &str, expected: &str) -> Self {
        ApiError::new(
            "invalid_type",
            format!("Invalid type for '{param}': expected {expected}."),
            Some(param),
        )
    }
}

/// An audio format of the GA API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `audio/pcm`: 16-bit little-endian at 24 kHz.
    Pcm,
    /// `audio/pcmu`: G.711 μ-law at 8 kHz.
    Pcmu,
    /// `audio/pcma`: G.711 A-law at 8 kHz.
    Pcma,
}

impl Format {
    pub fn from_type(t: &str) -> Option<Format> {
        match t {
            "audio/pcm" => Some(Format::Pcm),
            "audio/pcmu" => Some(Format::Pcmu),
            "audio/pcma" => Some(Format::Pcma),
            _ => None,
        }
    }

    /// The format object as the server states it.
    pub fn to_json(self) -> Value {
        match self {
            Format::Pcm => json!({ "type": "audio/pcm", "rate": 24000 }),
            Format::Pcmu => json!({ "type": "audio/pcmu" }),
            Format::Pcma => json!({ "type": "audio/pcma" }),
        }
    }

    pub fn bytes_per_ms(self) -> usize {
        match self {
            Format::Pcm => 48,
            Format::Pcmu | Format::Pcma => 8,
        }
    }

    /// Decodes raw bytes of this format into 16-bit linear samples.
    pub fn decode(self, bytes: &[u8]) -> Vec<i16> {
        match self {
            Format::Pcm => bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            Format::Pcmu => bytes
                .iter()
                .map(|&b| super::g711::ulaw_to_linear(b))
                .collect(),
            Format::Pcma => bytes
                .iter()
                .map(|&b| super::g711::alaw_to_linear(b))
                .collect(),
        }
    }

    /// The fake's answer pattern in this format, `len` bytes.
    pub fn pattern(self, len: usize) -> Vec<u8> {
        match self {
            Format::Pcm => super::g711::pattern_pcm16(len),
            Format::Pcmu => super::g711::pattern_ulaw(len),
            Format::Pcma => super::g711::pattern_alaw(len),
        }
    }
}

/// The turn detection settings the fake's VAD follows.
#[derive(Debug, Clone, Copy)]
pub struct Vad {
    pub prefix_padding_ms: u64,
    pub silence_duration_ms: u64,
    pub create_response: bool,
    pub interrupt_response: bool,
}

fn server_vad_defaults() -> Value {
    // The defaults the GA reference gives for server_vad.
    json!({
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": null,
        "create_response": true,
        "interrupt_response": true
    })
}

/// The session as `session.created` states it: GA defaults (PCM 24 kHz in
/// and out, server VAD), before the client configures anything.
pub fn initial(id: &str, model: &str, expires_at: i64) -> Value {
    json!({
        "type": "realtime",
        "object": "realtime.session",
        "id": id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": null,
        "truncation": "auto",
        "prompt": null,
        "expires_at": expires_at,
        "include": null,
        "audio": {
            "input": {
                "format": Format::Pcm.to_json(),
                "transcription": null,
                "noise_reduction": null,
                "turn_detection": server_vad_defaults()
            },
            "output": {
                "format": Format::Pcm.to_json(),
                "voice": "alloy",
                "speed": 1.0
            }
        }
    })
}

fn obj<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::wrong_type(param, "an object"))
}

fn only(map: &Map<String, Value>, allowed: &[&str], prefix: &str) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::unknown(&format!("{prefix}.{k}"))),
        None => Ok(()),
    }
}

fn check_format(v: &Value, param: &str) -> Result<Format, ApiError> {
    let map = obj(v, param)?;
    let Some(t) = map.get("type") else {
        return Err(ApiError::missing(&format!("{param}.type")));
    };
    let t = t
        .as_str()
        .ok_or_else(|| ApiError::wrong_type(&format!("{param}.type"), "a string"))?;
    let Some(format) = Format::from_type(t) else {
        return Err(ApiError::new(
            "invalid_value",
            format!(
                "Invalid value: '{t}'. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'."
            ),
            Some(&format!("{param}.type")),
        ));
    };
    match format {
        Format::Pcm => {
            only(map, &["type", "rate"], param)?;
            match map.get("rate") {
                // The spec's rule for the fake: PCM must state its rate.
                None => return Err(ApiError::missing(&format!("{param}.rate"))),
                Some(r) if r.as_u64() == Some(24000) => {}
                Some(r) => {
                    return Err(ApiError::invalid(
                        &format!("{param}.rate"),
                        format!("{r}; only 24000 is supported"),
                    ))
                }
            }
        }
        // G.711 is always 8 kHz: its format object has no rate.
        Format::Pcmu | Format::Pcma => only(map, &["type"], param)?,
    }
    Ok(format)
}

fn check_bool(map: &Map<String, Value>, key: &str, prefix: &str) -> Result<(), ApiError> {
    match map.get(key) {
        Some(v) if !v.is_boolean() => Err(ApiError::wrong_type(
            &format!("{prefix}.{key}"),
            "a boolean",
        )),
        _ => Ok(()),
    }
}

fn check_ms(
    map: &Map<String, Value>,
    key: &str,
    prefix: &str,
    nullable: bool,
) -> Result<(), ApiError> {
    match map.get(key) {
        Some(Value::Null) if nullable => Ok(()),
        Some(v) if v.as_u64().is_none() => Err(ApiError::wrong_type(
            &format!("{prefix}.{key}"),
            "a non-negative integer",
        )),
        _ => Ok(()),
    }
}

/// Checks a `turn_detection` value and returns it with defaults filled in.
fn check_turn_detection(v: &Value) -> Result<Value, ApiError> {
    const P: &str = "session.audio.input.turn_detection";
    if v.is_null() {
        return Ok(Value::Null);
    }
    let map = obj(v, P)?;
    let t = match map.get("type") {
        None => return Err(ApiError::missing(&format!("{P}.type"))),
        Some(t) => t.as_str().unwrap_or_default(),
    };
    let mut merged = match t {
        "server_vad" => {
            only(
                map,
                &[
                    "type",
                    "threshold",
                    "prefix_padding_ms",
                    "silence_duration_ms",
                    "idle_timeout_ms",
                    "create_response",
                    "interrupt_response",
                ],
                P,
            )?;
            if let Some(th) = map.get("threshold") {
                match th.as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => {}
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{P}.threshold"),
                            "expected 0.0 to 1.0",
                        ))
                    }
                }
            }
            check_ms(map, "prefix_padding_ms", P, false)?;
            check_ms(map, "silence_duration_ms", P, false)?;
            check_ms(map, "idle_timeout_ms", P, true)?;
            server_vad_defaults()
        }
        "semantic_vad" => {
            only(
                map,
                &["type", "eagerness", "create_response", "interrupt_response"],
                P,
            )?;
            if let Some(e) = map.get("eagerness") {
                if !matches!(e.as_str(), Some("low" | "medium" | "high" | "auto")) {
                    return Err(ApiError::invalid(&format!("{P}.eagerness"), e));
                }
            }
            json!({ "type": "semantic_vad", "eagerness": "auto", "create_response": true, "interrupt_response": true })
        }
        other => {
            return Err(ApiError::new(
                "invalid_value",
                format!(
                "Invalid value: '{other}'. Supported values are: 'server_vad' and 'semantic_vad'."
            ),
                Some(&format!("{P}.type")),
            ))
        }
    };
    check_bool(map, "create_response", P)?;
    check_bool(map, "interrupt_response", P)?;
    if let Some(m) = merged.as_object_mut() {
        for (k, v) in map {
            m.insert(k.clone(), v.clone());
        }
    }
    Ok(merged)
}

fn check_tools(v: &Value) -> Result<(), ApiError> {
    let tools = v
        .as_array()
        .ok_or_else(|| ApiError::wrong_type("session.tools", "an array"))?;
    for (i, tool) in tools.iter().enumerate() {
        let p = format!("session.tools[{i}]");
        let map = obj(tool, &p)?;
        match map.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some("mcp") => continue,
            Some(other) => {
                return Err(ApiError::invalid(
                    &format!("{p}.type"),
                    format!("'{other}'"),
                ))
            }
            None => return Err(ApiError::missing(&format!("{p}.type"))),
        }
        only(map, &["type", "name", "description", "parameters"], &p)?;
        match map.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {}
            _ => return Err(ApiError::missing(&format!("{p}.name"))),
        }
        if let Some(params) = map.get("parameters") {
            obj(params, &format!("{p}.parameters"))?;
        }
    }
    Ok(())
}

fn check_tool_choice(v: &Value) -> Result<(), ApiError> {
    match v {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(()),
        Value::Object(m) if m.get("type").and_then(Value::as_str) == Some("function") => {
            match m.get("name").and_then(Value::as_str) {
                Some(_) => Ok(()),
                None => Err(ApiError::missing("session.tool_choice.name")),
            }
        }
        _ => Err(ApiError::invalid("session.tool_choice", v)),
    }
}

/// Checks a `session.update`'s `session` against the current session and
/// returns the merged, effective session; nothing changes on an error.
/// `voice_locked`: the model has already answered with audio, after which
/// the voice can no longer change.
pub fn apply_update(
    current: &Value,
    update: &Value,
    voice_locked: bool,
) -> Result<Value, ApiError> {
    let map = obj(update, "session")?;
    only(
        map,
        &[
            "type",
            "model",
            "instructions",
            "output_modalities",
            "audio",
            "tools",
            "tool_choice",
            "max_output_tokens",
            "tracing",
            "truncation",
            "prompt",
            "include",
        ],
        "session",
    )?;
    match map.get("type").map(|t| t.as_str()) {
        None => return Err(ApiError::missing("session.type")),
        Some(Some("realtime")) => {}
        Some(_) => {
            return Err(ApiError::new(
                "invalid_value",
                "Invalid value for 'session.type': this fake serves 'realtime' sessions only.",
                Some("session.type"),
            ))
        }
    }
    let mut next = current.clone();
    let Some(out) = next.as_object_mut() else {
        return Err(ApiError::new("server_error", "corrupt session", None));
    };
    if let Some(m) = map.get("model") {
        if Some(m) != current.get("model") {
            return Err(ApiError::invalid(
                "session.model",
                "the model cannot be changed in a session",
            ));
        }
    }
    if let Some(i) = map.get("instructions") {
        if !i.is_string() {
            return Err(ApiError::wrong_type("session.instructions", "a string"));
        }
        out.insert("instructions".into(), i.clone());
    }
    if let Some(m) = map.get("output_modalities") {
        let ok = m
            .as_array()
            .is_some_and(|a| a.len() == 1 && matches!(a[0].as_str(), Some("audio" | "text")));
        if !ok {
            return Err(ApiError::invalid(
                "session.output_modalities",
                "expected [\"audio\"] or [\"text\"]",
            ));
        }
        out.insert("output_modalities".into(), m.clone());
    }
    if let Some(t) = map.get("tools") {
        check_tools(t)?;
        out.insert("tools".into(), t.clone());
    }
    if let Some(t) = map.get("tool_choice") {
        check_tool_choice(t)?;
        out.insert("tool_choice".into(), t.clone());
    }
    if let Some(m) = map.get("max_output_tokens") {
        let ok = m.as_str() == Some("inf") || m.as_u64().is_some_and(|n| (1..=4096).contains(&n));
        if !ok {
            return Err(ApiError::invalid("session.max_output_tokens", m));
        }
        out.insert("max_output_tokens".into(), m.clone());
    }
    for key in ["tracing", "truncation", "prompt", "include"] {
        if let Some(v) = map.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(audio) = map.get("audio") {
        let audio = obj(audio, "session.audio")?;
        only(audio, &["input", "output"], "session.audio")?;
        if let Some(input) = audio.get("input") {
            const P: &str = "session.audio.input";
            let input = obj(input, P)?;
            only(
                input,
                &[
                    "format",
                    "transcription",
                    "noise_reduction",
                    "turn_detection",
                ],
                P,
            )?;
            if let Some(f) = input.get("format") {
                let f = check_format(f, &format!("{P}.format"))?;
                next["audio"]["input"]["format"] = f.to_json();
            }
            if let Some(t) = input.get("transcription") {
                if !t.is_null() {
                    let m = obj(t, &format!("{P}.transcription"))?;
                    only(
                        m,
                        &["model", "language", "prompt"],
                        &format!("{P}.transcription"),
                    )?;
                }
                next["audio"]["input"]["transcription"] = t.clone();
            }
            if let Some(n) = input.get("noise_reduction") {
                if !n.is_null() {
                    let m = obj(n, &format!("{P}.noise_reduction"))?;
                    only(m, &["type"], &format!("{P}.noise_reduction"))?;
                    if !matches!(
                        m.get("type").and_then(Value::as_str),
                        Some("near_field" | "far_field")
                    ) {
                        return Err(ApiError::invalid(&format!("{P}.noise_reduction.type"), n));
                    }
                }
                next["audio"]["input"]["noise_reduction"] = n.clone();
            }
            if let Some(t) = input.get("turn_detection") {
                next["audio"]["input"]["turn_detection"] = check_turn_detection(t)?;
            }
        }
        if let Some(output) = audio.get("output") {
            const P: &str = "session.audio.output";
            let output = obj(output, P)?;
            only(output, &["format", "voice", "speed"], P)?;
            if let Some(f) = output.get("format") {
                let f = check_format(f, &format!("{P}.format"))?;
                next["audio"]["output"]["format"] = f.to_json();
            }
            if let Some(v) = output.get("voice") {
                let Some(voice) = v.as_str() else {
                    return Err(ApiError::wrong_type(&format!("{P}.voice"), "a string"));
                };
                if voice_locked && current["audio"]["output"]["voice"].as_str() != Some(voice) {
                    return Err(ApiError::new(
                        "cannot_update_voice",
                        "Cannot update a conversation's voice if assistant audio is present.",
                        Some("session.audio.output.voice"),
                    ));
                }
                next["audio"]["output"]["voice"] = v.clone();
            }
            if let Some(s) = output.get("speed") {
                if !s.as_f64().is_some_and(|x| (0.25..=1.5).contains(&x)) {
                    return Err(ApiError::invalid(
                        &format!("{P}.speed"),
                        "expected 0.25 to 1.5",
                    ));
                }
                next["audio"]["output"]["speed"] = s.clone();
            }
        }
    }
    Ok(next)
}

/// The input or output format the session states (PCM if unreadable,
/// which cannot happen for a session built by this module).
pub fn format_of(session: &Value, direction: &str) -> Format {
    session["audio"][direction]["format"]["type"]
        .as_str()
        .and_then(Format::from_type)
        .unwrap_or(Format::Pcm)
}

/// The VAD settings, or `None` when turn detection is off.
pub fn vad_of(session: &Value) -> Option<Vad> {
    let td = &session["audio"]["input"]["turn_detection"];
    if td.is_null() {
        return None;
    }
    Some(Vad {
        prefix_padding_ms: td["prefix_padding_ms"].as_u64().unwrap_or(300),
        // semantic_vad has no silence setting; the fake waits its default.
        silence_duration_ms: td["silence_duration_ms"].as_u64().unwrap_or(500),
        create_response: td["create_response"].as_bool().unwrap_or(true),
        interrupt_response: td["interrupt_response"].as_bool().unwrap_or(true),
    })
}

/// Names of the function tools the session declares.
pub fn tool_names(session: &Value) -> Vec<String> {
    session["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter(|t| t["type"] == "function")
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        initial("sess_1", "gpt-realtime", 0)
    }

    #[test]
    fn pcmu_in_and_out_is_accepted() {
        let upd = json!({"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}});
        let s = apply_update(&base(), &upd, false).unwrap();
        assert_eq!(format_of(&s, "input"), Format::Pcmu);
        assert_eq!(format_of(&s, "output"), Format::Pcmu);
        assert_eq!(s["audio"]["output"]["voice"], "marin");
    }

    #[test]
    fn refusals() {
        let cases = [
            (
                json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm"}}}}),
                "missing_required_parameter",
            ),
            (
                json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu", "rate": 8000}}}}),
                "unknown_parameter",
            ),
            (
                json!({"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}}),
                "invalid_value",
            ),
            (
                json!({"type": "realtime", "input_audio_format": "g711_ulaw"}),
                "unknown_parameter",
            ),
            (json!({"instructions": "x"}), "missing_required_parameter"),
            (
                json!({"type": "realtime", "tools": [{"type": "function"}]}),
                "missing_required_parameter",
            ),
        ];
        for (upd, code) in cases {
            let err = apply_update(&base(), &upd, false).unwrap_err();
            assert_eq!(err.code, code, "{upd}");
        }
    }

    #[test]
    fn voice_is_locked_after_audio() {
        let upd = json!({"type": "realtime", "audio": {"output": {"voice": "cedar"}}});
        assert_eq!(
            apply_update(&base(), &upd, true).unwrap_err().code,
            "cannot_update_voice"
        );
        assert!(apply_update(&base(), &upd, false).is_ok());
    }

    #[test]
    fn turn_detection_gets_defaults_and_can_be_turned_off() {
        let upd = json!({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}}});
        let s = apply_update(&base(), &upd, false).unwrap();
        let vad = vad_of(&s).unwrap();
        assert_eq!(vad.silence_duration_ms, 200);
        assert_eq!(vad.prefix_padding_ms, 300);
        let off = json!({"type": "realtime", "audio": {"input": {"turn_detection": null}}});
        assert!(vad_of(&apply_update(&s, &off, false).unwrap()).is_none());
    }
}
