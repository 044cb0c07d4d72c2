//! ARI events from the `/ari/events` WebSocket, decoded with serde.
//!
//! The types the daemon acts on are variants with their fields; every
//! other type decodes to `Event::Other` with its name, and unknown fields
//! are ignored, so a newer Asterisk cannot break the decoder.

use serde::{Deserialize, Serialize};

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
pub fn decode(text: &str) -> Result<Envelope, DecodeError> {
    Ok(serde_json::from_str(text)?)
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
