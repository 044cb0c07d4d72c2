//! Endpoints as Asterisk shows them (`GET /ari/endpoints/{tech}/{resource}`,
//! `POST /ari/applications/{app}/subscription?eventSource=endpoint:…`,
//! `EndpointStateChange`), so trunk health (README "Trunk health") can be
//! tested: a test sets a trunk's endpoint offline mid-pass and the apps
//! subscribed to it hear of it, as they would when a SIP peer stops
//! answering its qualify.
//!
//! Only endpoints a test (or the defaults) named exist; any other is 404
//! `Endpoint not found`, as for a typo in `health_endpoint`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::Shared;

/// `PJSIP/voip_issabel` → its JSON, in Asterisk's shape.
pub(super) fn endpoint_json(name: &str, state: &str) -> Value {
    let (tech, resource) = name.split_once('/').unwrap_or((name, ""));
    json!({ "technology": tech, "resource": resource, "state": state, "channel_ids": [] })
}

pub(super) async fn get_endpoint(
    State(sim): State<Arc<Shared>>,
    Path((tech, resource)): Path<(String, String)>,
) -> Response {
    let name = format!("{tech}/{resource}");
    match sim.inner().endpoints.get(&name) {
        Some(state) => Json(endpoint_json(&name, state)).into_response(),
        None => super::http::message(StatusCode::NOT_FOUND, "Endpoint not found"),
    }
}

pub(super) async fn subscribe(
    State(sim): State<Arc<Shared>>,
    Path(app): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let sources: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "eventSource")
        .map(|(_, v)| v.as_str())
        .collect();
    if sources.is_empty() {
        return super::http::message(StatusCode::BAD_REQUEST, "Missing parameter eventSource");
    }
    let mut inner = sim.inner();
    if !inner.apps.contains_key(&app) {
        return super::http::message(StatusCode::NOT_FOUND, "Application not found");
    }
    // Only endpoint sources are simulated; all of them are checked first,
    // as Asterisk does, so a bad one subscribes nothing.
    let mut names = Vec::new();
    for source in sources {
        match source.strip_prefix("endpoint:") {
            Some(name) if inner.endpoints.contains_key(name) => names.push(name.to_owned()),
            _ => {
                return super::http::message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Event source does not exist",
                )
            }
        }
    }
    for name in names {
        let apps = inner.endpoint_subs.entry(name).or_default();
        if !apps.contains(&app) {
            apps.push(app.clone());
        }
    }
    let mut ids: Vec<&String> = inner
        .endpoint_subs
        .iter()
        .filter(|(_, apps)| apps.contains(&app))
        .map(|(n, _)| n)
        .collect();
    ids.sort();
    Json(json!({ "name": app, "channel_ids": [], "bridge_ids": [], "endpoint_ids": ids, "device_names": [], "events_allowed": [], "events_disallowed": [] }))
        .into_response()
}

impl Shared {
    /// Sets (or creates) an endpoint's state; a change is sent as
    /// `EndpointStateChange` to every app subscribed to it.
    pub(super) fn set_endpoint_state(&self, name: &str, state: &str) {
        let mut inner = self.inner();
        let before = inner.endpoints.insert(name.to_owned(), state.to_owned());
        if before.as_deref() == Some(state) {
            return;
        }
        let apps = inner.endpoint_subs.get(name).cloned().unwrap_or_default();
        for app in apps {
            let ev = json!({
                "type": "EndpointStateChange",
                "timestamp": super::state::now_stamp(),
                "endpoint": endpoint_json(name, state),
            });
            inner.emit_app(&app, ev, &self.asterisk_id);
        }
    }
}
