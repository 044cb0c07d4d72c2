//! ARI events from the `/ari/events` WebSocket, decoded with serde.
//!
//! The types the daemon acts on are variants with their fields; every
//! other type decodes to `Event::Other` with its name, and unknown fields
//! are ignored, so a newer Asterisk cannot break the decoder.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::model::{Bridge, Channel, Endpoint, Playback};

/// One event with the fields common to all.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Envelope {
    #[serde(default)]
    pub application: String,
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub asterisk_id: String,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum Event {
    StasisStart {
        channel: Channel,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replace_channel: Option<Channel>,
    },
    StasisEnd {
        channel: Channel,
    },
    Dial {
        peer: Channel,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller: Option<Channel>,
        #[serde(default)]
        dialstatus: String,
        #[serde(default)]
        dialstring: String,
        #[serde(default)]
        forward: String,
    },
    ChannelStateChange {
        channel: Channel,
    },
    ChannelVarset {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<Channel>,
        variable: String,
        #[serde(default)]
        value: String,
    },
    ChannelHangupRequest {
        channel: Channel,
        #[serde(default)]
        cause: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        soft: Option<bool>,
    },
    ChannelDestroyed {
        channel: Channel,
        #[serde(default)]
        cause: i64,
        #[serde(default)]
        cause_txt: String,
    },
    PlaybackStarted {
        playback: Playback,
    },
    PlaybackContinuing {
        playback: Playback,
    },
    PlaybackFinished {
        playback: Playback,
    },
    ChannelDtmfReceived {
        channel: Channel,
        #[serde(default)]
        digit: String,
        #[serde(default)]
        duration_ms: i64,
    },
    ChannelEnteredBridge {
        bridge: Bridge,
        channel: Channel,
    },
    ChannelLeftBridge {
        bridge: Bridge,
        channel: Channel,
    },
    /// A trunk's endpoint went online or offline (README "Trunk health");
    /// sent to apps subscribed to `endpoint:{tech}/{resource}`.
    EndpointStateChange {
        endpoint: Endpoint,
    },
    ApplicationReplaced {},
    /// Any other event type (ChannelDialplan, ChannelCallerId, BridgeCreated …).
    #[serde(other)]
    Other,
}

impl Event {
    /// The channel the event is about, if any.
    pub fn channel(&self) -> Option<&Channel> {
        match self {
            Event::StasisStart { channel, .. }
            | Event::StasisEnd { channel }
            | Event::ChannelStateChange { channel }
            | Event::ChannelHangupRequest { channel, .. }
            | Event::ChannelDestroyed { channel, .. }
            | Event::ChannelDtmfReceived { channel, .. }
            | Event::ChannelEnteredBridge { channel, .. }
            | Event::ChannelLeftBridge { channel, .. } => Some(channel),
            Event::Dial { peer, .. } => Some(peer),
            Event::ChannelVarset { channel, .. } => channel.as_ref(),
            _ => None,
        }
    }
}

/// Why a text frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed ARI event: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

/// Decodes one WebSocket text frame.
///
/// Every event passes here, so it is the daemon's hottest parse. The
/// derived decoder of `Envelope` buffers each event twice (once for
/// `flatten`, once more for the `type` tag) into serde's generic tree;
/// `fast` reads the frame once, keeping each field as its raw text, and
/// then parses only the fields its type has, straight into their types.
/// Anything it does not expect goes to the derived decoder, whose answer
/// (and error message) is the reference; the tests below check that both
/// agree on every recorded event and on odd and broken frames.
pub fn decode(text: &str) -> Result<Envelope, DecodeError> {
    match fast(text) {
        Some(env) => Ok(env),
        None => decode_derived(text),
    }
}

/// The derived decoder alone (the reference for `decode`).
pub fn decode_derived(text: &str) -> Result<Envelope, DecodeError> {
    Ok(serde_json::from_str(text)?)
}

/// The fields any event type the daemon acts on can carry, unparsed.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    application: String,
    #[serde(default)]
    timestamp: String,
    #[serde(default)]
    asterisk_id: String,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    args: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    replace_channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    peer: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    caller: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    dialstatus: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    dialstring: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    forward: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    variable: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    cause: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    soft: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    cause_txt: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    playback: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    digit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    duration_ms: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    bridge: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    endpoint: Option<&'a RawValue>,
}

/// A field that is there, as its raw text — `null` too, which is not the
/// same as absent to the derived decoder (`Option<&RawValue>` alone would
/// read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A field the type requires; `None` (to the derived decoder) if it is
/// missing or does not parse.
fn need<T: DeserializeOwned>(v: Option<&RawValue>) -> Option<T> {
    serde_json::from_str(v?.get()).ok()
}

/// A field with a default: absent is the default, present must parse
/// (for an `Option`, absent or `null` is `None`).
fn or_default<T: DeserializeOwned + Default>(v: Option<&RawValue>) -> Option<T> {
    match v {
        None => Some(T::default()),
        Some(v) => serde_json::from_str(v.get()).ok(),
    }
}

/// `decode` in one read of the frame; `None` for anything unexpected.
fn fast(text: &str) -> Option<Envelope> {
    let r: Raw = serde_json::from_str(text).ok()?;
    let event = match r.kind {
        "StasisStart" => Event::StasisStart {
            channel: need(r.channel)?,
            args: or_default(r.args)?,
            replace_channel: or_default(r.replace_channel)?,
        },
        "StasisEnd" => Event::StasisEnd {
            channel: need(r.channel)?,
        },
        "Dial" => Event::Dial {
            peer: need(r.peer)?,
            caller: or_default(r.caller)?,
            dialstatus: or_default(r.dialstatus)?,
            dialstring: or_default(r.dialstring)?,
            forward: or_default(r.forward)?,
        },
        "ChannelStateChange" => Event::ChannelStateChange {
            channel: need(r.channel)?,
        },
        "ChannelVarset" => Event::ChannelVarset {
            channel: or_default(r.channel)?,
            variable: need(r.variable)?,
            value: or_default(r.value)?,
        },
        "ChannelHangupRequest" => Event::ChannelHangupRequest {
            channel: need(r.channel)?,
            cause: or_default(r.cause)?,
            soft: or_default(r.soft)?,
        },
        "ChannelDestroyed" => Event::ChannelDestroyed {
            channel: need(r.channel)?,
            cause: or_default(r.cause)?,
            cause_txt: or_default(r.cause_txt)?,
        },
        "PlaybackStarted" => Event::PlaybackStarted {
            playback: need(r.playback)?,
        },
        "PlaybackContinuing" => Event::PlaybackContinuing {
            playback: need(r.playback)?,
        },
        "PlaybackFinished" => Event::PlaybackFinished {
            playback: need(r.playback)?,
        },
        "ChannelDtmfReceived" => Event::ChannelDtmfReceived {
            channel: need(r.channel)?,
            digit: or_default(r.digit)?,
            duration_ms: or_default(r.duration_ms)?,
        },
        "ChannelEnteredBridge" => Event::ChannelEnteredBridge {
            bridge: need(r.bridge)?,
            channel: need(r.channel)?,
        },
        "ChannelLeftBridge" => Event::ChannelLeftBridge {
            bridge: need(r.bridge)?,
            channel: need(r.channel)?,
        },
        "EndpointStateChange" => Event::EndpointStateChange {
            endpoint: need(r.endpoint)?,
        },
        "ApplicationReplaced" => Event::ApplicationReplaced {},
        _ => Event::Other,
    };
    Some(Envelope {
        application: r.application,
        timestamp: r.timestamp,
        asterisk_id: r.asterisk_id,
        event,
    })
}

/// The `type` of a frame, for logging events that decode to `Other` or fail.
pub fn type_name(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<Only>(text).ok().map(|o| o.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both decoders' answers, compared as text (errors by message).
    fn both(text: &str) -> (String, String) {
        let show = |r: Result<Envelope, DecodeError>| match r {
            Ok(e) => format!("{e:?}"),
            Err(e) => format!("error: {e}"),
        };
        (show(decode(text)), show(decode_derived(text)))
    }

    #[test]
    fn the_one_read_decoder_agrees_with_the_derived_one_on_every_recording() {
        let recorded = include_str!("../../tests/fixtures/ari/events.jsonl");
        let mut fast_hits = 0;
        for (n, line) in recorded.lines().enumerate() {
            let rec: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = rec["event"].to_string();
            let (ours, reference) = both(&text);
            assert_eq!(ours, reference, "line {}", n + 1);
            fast_hits += usize::from(fast(&text).is_some());
        }
        // Not a silent fallback: the one-read path decodes them all.
        assert_eq!(fast_hits, recorded.lines().count());
    }

    #[test]
    fn the_one_read_decoder_agrees_on_odd_and_broken_frames() {
        let channel = r#"{"id":"c1","name":"PJSIP/x-1","state":"Up"}"#;
        let frames = [
            format!(r#"{{"type":"StasisStart","channel":{channel}}}"#),
            format!(r#"{{"type":"StasisStart","channel":{channel},"args":null}}"#),
            format!(r#"{{"type":"StasisStart","channel":{channel},"replace_channel":null}}"#),
            format!(r#"{{"type":"StasisStart","channel":{channel},"args":["a",1]}}"#),
            format!(r#"{{"channel":{channel},"type":"StasisEnd","application":"overdue-app"}}"#),
            r#"{"type":"StasisEnd","channel":null}"#.into(),
            r#"{"type":"StasisEnd","channel":{"name":"no id"}}"#.into(),
            format!(r#"{{"type":"ChannelHangupRequest","channel":{channel},"cause":"16"}}"#),
            format!(r#"{{"type":"ChannelHangupRequest","channel":{channel},"soft":true}}"#),
            format!(r#"{{"type":"ChannelDestroyed","channel":{channel},"cause":16,"cause_txt":"Normal Clearing"}}"#),
            r#"{"type":"ChannelVarset","variable":"AMDSTATUS","value":"MACHINE"}"#.into(),
            r#"{"type":"ChannelVarset","value":"x"}"#.into(),
            format!(r#"{{"type":"Dial","peer":{channel},"caller":null,"dialstatus":"ANSWER"}}"#),
            r#"{"type":"PlaybackFinished","playback":{"id":"p1","state":"done"}}"#.into(),
            format!(r#"{{"type":"ChannelDtmfReceived","channel":{channel},"digit":"1","duration_ms":120}}"#),
            format!(r#"{{"type":"ChannelEnteredBridge","bridge":{{"id":"b1"}},"channel":{channel}}}"#),
            r#"{"type":"PeerStatusChange","peer":{"peer_status":"Reachable"},"endpoint":{"technology":"PJSIP","resource":"t"}}"#.into(),
            r#"{"type":"ApplicationReplaced","application":"overdue-app"}"#.into(),
            r#"{"type":"StasisStart","channel":{"id":"c1"}}"#.into(),
            r#"{"type":"StasisEnd","type":"StasisStart","channel":{"id":"c1"}}"#.into(),
            r#"{"application":"x"}"#.into(),
            r#"{"type":7}"#.into(),
            "[1,2]".into(),
            "not json".into(),
        ];
        for f in &frames {
            let (ours, reference) = both(f);
            assert_eq!(ours, reference, "{f}");
        }
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let e = decode(r#"{"type":"BridgeMerged","application":"overdue-app","x":1}"#).unwrap();
        assert_eq!(e.event, Event::Other);
        assert_eq!(e.application, "overdue-app");
        let e =
            decode(r#"{"type":"StasisEnd","new_field":[1,2],"channel":{"id":"c1","extra":true}}"#)
                .unwrap();
        assert!(matches!(e.event, Event::StasisEnd { ref channel } if channel.id == "c1"));
        assert!(
            decode(r#"{"type":"StasisEnd"}"#).is_err(),
            "a StasisEnd without its channel is malformed"
        );
        assert!(decode("not json").is_err());
        assert_eq!(type_name(r#"{"type":"Foo","a":1}"#).as_deref(), Some("Foo"));
        let e = decode(r#"{"type":"EndpointStateChange","application":"overdue-app","endpoint":{"technology":"PJSIP","resource":"voip_issabel","state":"offline","channel_ids":[]}}"#).unwrap();
        assert!(
            matches!(e.event, Event::EndpointStateChange { ref endpoint } if endpoint.name() == "PJSIP/voip_issabel" && endpoint.state == "offline")
        );
        assert!(
            decode(r#"{"type":"EndpointStateChange","endpoint":{"state":"offline"}}"#).is_err(),
            "an endpoint without its name is malformed"
        );
    }
}
