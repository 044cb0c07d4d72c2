//! ARI's JSON objects (channels, playbacks, bridges, applications) as
//! Asterisk 22 sends them. Fields we do not use are ignored on input;
//! the simulator fills every field the recordings show.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerId {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub number: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialplanCep {
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub exten: String,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub app_name: String,
    #[serde(default)]
    pub app_data: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Down, Rsrvd, OffHook, Dialing, Ring, Ringing, Up, Busy, …
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub protocol_id: String,
    #[serde(default)]
    pub caller: CallerId,
    #[serde(default)]
    pub connected: CallerId,
    #[serde(default)]
    pub accountcode: String,
    #[serde(default)]
    pub dialplan: DialplanCep,
    #[serde(default)]
    pub creationtime: String,
    #[serde(default)]
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channelvars: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Playback {
    pub id: String,
    #[serde(default)]
    pub media_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_media_uri: Option<String>,
    #[serde(default)]
    pub target_uri: String,
    #[serde(default)]
    pub language: String,
    /// queued, playing, continuing, done, failed
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub id: String,
    #[serde(default)]
    pub technology: String,
    #[serde(default)]
    pub bridge_type: String,
    #[serde(default)]
    pub bridge_class: String,
    #[serde(default)]
    pub creator: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub creationtime: String,
    #[serde(default)]
    pub video_mode: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub channel_ids: Vec<String>,
    #[serde(default)]
    pub bridge_ids: Vec<String>,
    #[serde(default)]
    pub endpoint_ids: Vec<String>,
    #[serde(default)]
    pub device_names: Vec<String>,
    #[serde(default)]
    pub events_allowed: Vec<serde_json::Value>,
    #[serde(default)]
    pub events_disallowed: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoundFormat {
    pub language: String,
    pub format: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sound {
    pub id: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub formats: Vec<SoundFormat>,
}

/// `GET /ari/asterisk/info`, the part the daemon reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsteriskInfo {
    #[serde(default)]
    pub status: AsteriskStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsteriskStatus {
    #[serde(default)]
    pub startup_time: String,
    #[serde(default)]
    pub last_reload_time: String,
}

/// An endpoint (`GET /ari/endpoints/{tech}/{resource}`, and in
/// `EndpointStateChange`). `state` is `online`, `offline` or `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub technology: String,
    pub resource: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub channel_ids: Vec<String>,
}

impl Endpoint {
    /// `Tech/resource`, as `health_endpoint` names it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.technology, self.resource)
    }
}
