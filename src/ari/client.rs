//! The ARI REST client: the handful of requests the daemon makes.
//!
//! Credentials go in a Basic `Authorization` header, never in a URL, so no
//! URL we build or log carries them. Every HTTP failure becomes an
//! `AriError` with the status and Asterisk's own message.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::model::{Application, AsteriskInfo, Bridge, Channel, Endpoint, Playback, Sound};
use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum AriError {
    /// Asterisk answered with an error status (401, 404, 409, 412, 500 …).
    #[error("ARI {method} {path}: HTTP {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("ARI {method} {path}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("ARI {method} {path}: cannot connect: {reason}")]
    Connect {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("ARI {method} {path}: {reason}")]
    Other {
        method: Method,
        path: String,
        reason: String,
    },
}

impl AriError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            AriError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Asterisk's message for a status error (`Allocation failed`, `Channel not found` …).
    pub fn message(&self) -> Option<&str> {
        match self {
            AriError::Status { message, .. } => Some(message),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// The request certainly never reached Asterisk (no connection could
    /// be made). A timeout or a connection lost mid-request is not this:
    /// Asterisk may have acted on it.
    pub(crate) fn never_reached_asterisk(&self) -> bool {
        matches!(self, AriError::Connect { .. })
    }
}

/// What to originate (`POST /ari/channels`).
#[derive(Debug, Clone, Default)]
pub struct Originate {
    pub endpoint: String,
    pub app: String,
    pub app_args: Option<String>,
    pub channel_id: Option<String>,
    pub other_channel_id: Option<String>,
    pub caller_id: Option<String>,
    /// Ring timeout in seconds, enforced by Asterisk.
    pub timeout_secs: Option<u64>,
    pub variables: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Variables<'a> {
    variables: &'a BTreeMap<String, String>,
}

/// What to create with `POST /ari/channels/externalMedia`.
/// A place in the dialplan (`context,extension,priority`) a channel is
/// sent to with `continue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub context: String,
    pub extension: String,
    pub priority: i64,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.context, self.extension, self.priority)
    }
}

#[derive(Debug, Clone)]
pub struct ExternalMedia {
    pub app: String,
    pub external_host: String,
    pub format: String,
    pub channel_id: Option<String>,
    /// Handed back as the new channel's `StasisStart.args`.
    pub data: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(alias = "error")]
    message: String,
}

#[derive(Clone)]
pub struct AriClient {
    http: reqwest::Client,
    base: String,
    /// `{base}/ari`, parsed once (or why it cannot be): every request
    /// appends its segments to a copy.
    api: Result<reqwest::Url, String>,
    /// The `Authorization` header, encoded once and marked sensitive.
    auth: reqwest::header::HeaderValue,
    /// Requests in flight at once (`MAX_REQUESTS`).
    requests: std::sync::Arc<tokio::sync::Semaphore>,
    username: String,
    password: Secret,
    timeout: Duration,
}

/// At most this many ARI requests in flight; the rest wait their turn.
/// Asterisk's HTTP server takes at most `sessionlimit` connections
/// (`http.conf`, 100 unless set, the event WebSocket included) and drops
/// the rest, so a burst of originates must not open one connection each;
/// and every open connection costs both sides buffers (1,000 calls started
/// at once opened up to 1,000 before there was a limit). Fewer cost
/// throughput: in the benchmark's full run with 16, the plays of a wave of
/// answered calls queued behind its originates (StasisStart → play p50 57
/// ms against 27 with 48, wall ratio 1.022 against 1.011), for 0.7 MB less
/// at 1,000 calls in flight (BENCHMARKS.md "Cost per call: what changed on
/// 2026-12-03 (evening)").
pub const MAX_REQUESTS: usize = 48;

/// Idle connections kept for the next requests: as many as may be in
/// flight, so a busy pass reuses its connections instead of closing the
/// surplus and opening new ones (with 16 kept of 48, a pass of 1,000 calls
/// opened 349). A request in flight holds one of these connections, so
/// about `MAX_REQUESTS` are open at once, plus any hyper is still handing
/// back to its pool when the next request gets its turn: well inside
/// Asterisk's 100 (the test `a_burst_of_requests_stays_within_the_request_limit`
/// counts them).
pub const MAX_IDLE: usize = MAX_REQUESTS;

/// The `Authorization` value for HTTP Basic.
pub(crate) fn basic_auth(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

impl std::fmt::Debug for AriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AriClient")
            .field("base", &self.base)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl AriClient {
    /// `base` is Asterisk's HTTP server, e.g. `http://127.0.0.1:8088`.
    pub fn new(
        base: &str,
        username: &str,
        password: Secret,
        timeout: Duration,
    ) -> Result<AriClient, AriError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(MAX_IDLE)
            .build()
            .map_err(|e| AriError::Other {
                method: Method::GET,
                path: String::new(),
                reason: e.to_string(),
            })?;
        let base = base.trim_end_matches('/');
        let api = reqwest::Url::parse(base)
            .map_err(|e| format!("bad ari.url: {e}"))
            .and_then(|mut url| {
                url.path_segments_mut()
                    .map_err(|_| "bad ari.url".to_owned())?
                    .pop_if_empty()
                    .push("ari");
                Ok(url)
            });
        let mut auth =
            reqwest::header::HeaderValue::from_str(&basic_auth(username, password.expose()))
                .map_err(|e| AriError::Other {
                    method: Method::GET,
                    path: String::new(),
                    reason: format!("ARI credentials: {e}"),
                })?;
        auth.set_sensitive(true);
        Ok(AriClient {
            http,
            api,
            auth,
            requests: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS)),
            base: base.to_owned(),
            username: username.to_owned(),
            password,
            timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub(crate) fn password(&self) -> &Secret {
        &self.password
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(reqwest::Response, tokio::sync::OwnedSemaphorePermit), AriError> {
        // Held until the answer's body is read (the connection is busy
        // until then). The semaphore is never closed.
        let turn = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AriError::Other {
                method: method.clone(),
                path: String::new(),
                reason: e.to_string(),
            })?;
        let path = format!("/{}", segments.join("/"));
        let path = path.as_str();
        // Url escapes each segment (`x;2`, ids with spaces …) for us.
        let mut url = self.api.clone().map_err(|reason| AriError::Other {
            method: method.clone(),
            path: path.to_owned(),
            reason,
        })?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(&method, path, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok((resp, turn));
        }
        let text = resp.text().await.unwrap_or_default();
        drop(turn);
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or_else(|_| text.trim().chars().take(200).collect());
        Err(AriError::Status {
            method,
            path: path.to_owned(),
            status,
            message,
        })
    }

    fn transport_error(&self, method: &Method, path: &str, e: reqwest::Error) -> AriError {
        // reqwest's messages can include the URL; ours never holds credentials, but keep them short.
        let (method, path) = (method.clone(), path.to_owned());
        if e.is_timeout() {
            AriError::Timeout {
                method,
                path,
                timeout: self.timeout,
            }
        } else if e.is_connect() {
            let reason =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            AriError::Connect {
                method,
                path,
                reason,
            }
        } else {
            AriError::Other {
                method,
                path,
                reason: e.without_url().to_string(),
            }
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, AriError> {
        // Boxed: a request's future is ~1 kB, and inline it would sit in
        // every call task's state for the call's whole life, though a
        // request lasts milliseconds (BENCHMARKS.md "How cost grows").
        Box::pin(async move {
            let (resp, _turn) = self.call(method.clone(), segments, query, body).await?;
            resp.json::<T>().await.map_err(|e| AriError::Other {
                method,
                path: format!("/{}", segments.join("/")),
                reason: format!("unexpected answer: {}", e.without_url()),
            })
        })
        .await
    }

    async fn empty(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<(), AriError> {
        // Boxed, as in `json`.
        Box::pin(async move {
            let (resp, _turn) = self.call(method, segments, query, None::<&()>).await?;
            // Read to the end, so that the connection can serve the next request.
            let _ = resp.bytes().await;
            Ok(())
        })
        .await
    }

    /// `POST /ari/channels`. The answer is the channel in state `Down`;
    /// how the call went is only told by events.
    pub async fn originate(&self, o: &Originate) -> Result<Channel, AriError> {
        let mut q = vec![("endpoint", o.endpoint.clone()), ("app", o.app.clone())];
        let opt = [
            ("appArgs", &o.app_args),
            ("channelId", &o.channel_id),
            ("otherChannelId", &o.other_channel_id),
            ("callerId", &o.caller_id),
        ];
        q.extend(
            opt.iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v.clone()))),
        );
        if let Some(t) = o.timeout_secs {
            q.push(("timeout", t.to_string()));
        }
        let body = (!o.variables.is_empty()).then_some(Variables {
            variables: &o.variables,
        });
        self.json(Method::POST, &["channels"], &q, body.as_ref())
            .await
    }

    /// `POST /ari/channels/{id}/play`: several media play in order as one playback.
    pub async fn play(
        &self,
        channel_id: &str,
        media: &[String],
        lang: Option<&str>,
        playback_id: Option<&str>,
    ) -> Result<Playback, AriError> {
        let mut q = vec![("media", media.join(","))];
        if let Some(l) = lang {
            q.push(("lang", l.to_owned()));
        }
        if let Some(p) = playback_id {
            q.push(("playbackId", p.to_owned()));
        }
        self.json(
            Method::POST,
            &["channels", channel_id, "play"],
            &q,
            None::<&()>,
        )
        .await
    }

    /// `POST /ari/bridges/{id}/play`: everyone in the bridge hears it.
    pub async fn play_bridge(
        &self,
        bridge_id: &str,
        media: &[String],
        lang: Option<&str>,
    ) -> Result<Playback, AriError> {
        let mut q = vec![("media", media.join(","))];
        if let Some(l) = lang {
            q.push(("lang", l.to_owned()));
        }
        self.json(
            Method::POST,
            &["bridges", bridge_id, "play"],
            &q,
            None::<&()>,
        )
        .await
    }

    /// `DELETE /ari/channels/{id}?reason=…` (`normal`, `busy`, `congestion`, `no_answer` …).
    pub async fn hangup(&self, channel_id: &str, reason: &str) -> Result<(), AriError> {
        self.empty(
            Method::DELETE,
            &["channels", channel_id],
            &[("reason", reason.to_owned())],
        )
        .await
    }

    pub async fn answer(&self, channel_id: &str) -> Result<(), AriError> {
        self.empty(Method::POST, &["channels", channel_id, "answer"], &[])
            .await
    }

    pub async fn channel(&self, channel_id: &str) -> Result<Channel, AriError> {
        self.json(Method::GET, &["channels", channel_id], &[], None::<&()>)
            .await
    }

    /// Whether Asterisk says the channel is gone: `Ok(true)` only for its
    /// 404, `Ok(false)` when it answers with the channel, `Err` when no
    /// answer tells. For callers that need only that much: the answer (a
    /// 400-byte `Channel`) is dropped here, not held in a call's future
    /// across its next await.
    pub async fn channel_gone(&self, channel_id: &str) -> Result<bool, AriError> {
        match self.channel(channel_id).await {
            Ok(_) => Ok(false),
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e),
        }
    }

    pub async fn channels(&self) -> Result<Vec<Channel>, AriError> {
        self.json(Method::GET, &["channels"], &[], None::<&()>)
            .await
    }

    pub async fn set_variable(
        &self,
        channel_id: &str,
        variable: &str,
        value: &str,
    ) -> Result<(), AriError> {
        let q = [
            ("variable", variable.to_owned()),
            ("value", value.to_owned()),
        ];
        self.empty(Method::POST, &["channels", channel_id, "variable"], &q)
            .await
    }

    pub async fn application(&self, name: &str) -> Result<Application, AriError> {
        self.json(Method::GET, &["applications", name], &[], None::<&()>)
            .await
    }

    pub async fn applications(&self) -> Result<Vec<Application>, AriError> {
        self.json(Method::GET, &["applications"], &[], None::<&()>)
            .await
    }

    pub async fn sound(&self, id: &str) -> Result<Sound, AriError> {
        self.json(Method::GET, &["sounds", id], &[], None::<&()>)
            .await
    }

    /// `DELETE /ari/playbacks/{id}`: stops a playback at once. Asterisk
    /// then reports it `done`, although it was cut (LAB.md fact 15).
    pub async fn stop_playback(&self, playback_id: &str) -> Result<(), AriError> {
        self.empty(Method::DELETE, &["playbacks", playback_id], &[])
            .await
    }

    /// `POST /ari/channels/{id}/continue`: the channel leaves Stasis and
    /// runs the dialplan at `context,extension,priority`. `StasisEnd` comes
    /// at once (even before this answers) but the call goes on; only
    /// `ChannelDestroyed` ends it (LAB.md fact 16).
    pub async fn continue_in_dialplan(
        &self,
        channel_id: &str,
        context: &str,
        extension: &str,
        priority: i64,
    ) -> Result<(), AriError> {
        let q = [
            ("context", context.to_owned()),
            ("extension", extension.to_owned()),
            ("priority", priority.to_string()),
        ];
        self.empty(Method::POST, &["channels", channel_id, "continue"], &q)
            .await
    }

    /// `continue_in_dialplan` to a configured destination: the one way
    /// both the keypad's `transfer` and the voice agent's hand a caller on.
    pub async fn continue_to(&self, channel_id: &str, to: &Destination) -> Result<(), AriError> {
        self.continue_in_dialplan(channel_id, &to.context, &to.extension, to.priority)
            .await
    }

    /// A mixing bridge.
    pub async fn create_bridge(&self, name: &str) -> Result<Bridge, AriError> {
        let q = [("type", "mixing".to_owned()), ("name", name.to_owned())];
        self.json(Method::POST, &["bridges"], &q, None::<&()>).await
    }

    /// A mixing bridge with our own id, so one whose answer was lost can
    /// still be found and destroyed (a bridge stays until deleted).
    pub async fn create_bridge_with_id(
        &self,
        bridge_id: &str,
        name: &str,
    ) -> Result<Bridge, AriError> {
        let q = [
            ("type", "mixing".to_owned()),
            ("name", name.to_owned()),
            ("bridgeId", bridge_id.to_owned()),
        ];
        self.json(Method::POST, &["bridges"], &q, None::<&()>).await
    }

    pub async fn add_to_bridge(&self, bridge_id: &str, channel_id: &str) -> Result<(), AriError> {
        self.empty(
            Method::POST,
            &["bridges", bridge_id, "addChannel"],
            &[("channel", channel_id.to_owned())],
        )
        .await
    }

    pub async fn destroy_bridge(&self, bridge_id: &str) -> Result<(), AriError> {
        self.empty(Method::DELETE, &["bridges", bridge_id], &[])
            .await
    }

    pub async fn external_media(&self, m: &ExternalMedia) -> Result<Channel, AriError> {
        let mut q = vec![
            ("app", m.app.clone()),
            ("external_host", m.external_host.clone()),
            ("format", m.format.clone()),
        ];
        if let Some(id) = &m.channel_id {
            q.push(("channelId", id.clone()));
        }
        if let Some(d) = &m.data {
            q.push(("data", d.clone()));
        }
        self.json(
            Method::POST,
            &["channels", "externalMedia"],
            &q,
            None::<&()>,
        )
        .await
    }

    /// `GET /ari/asterisk/info`: when this Asterisk started; a changed
    /// `startup_time` after a reconnect means it restarted meanwhile.
    pub async fn asterisk_info(&self) -> Result<AsteriskInfo, AriError> {
        self.json(Method::GET, &["asterisk", "info"], &[], None::<&()>)
            .await
    }

    /// `GET /ari/endpoints/{tech}/{resource}`: whether a trunk's endpoint
    /// is `online`, `offline` or `unknown` (README "Trunk health").
    /// `endpoint` is `Tech/resource`.
    pub async fn endpoint(&self, endpoint: &str) -> Result<Endpoint, AriError> {
        let (tech, resource) = endpoint.split_once('/').unwrap_or((endpoint, ""));
        self.json(
            Method::GET,
            &["endpoints", tech, resource],
            &[],
            None::<&()>,
        )
        .await
    }

    /// `POST /ari/applications/{app}/subscription?eventSource=endpoint:{tech}/{resource}`:
    /// `app` hears the endpoint's `EndpointStateChange` events.
    pub async fn subscribe_endpoint(&self, app: &str, endpoint: &str) -> Result<(), AriError> {
        self.empty(
            Method::POST,
            &["applications", app, "subscription"],
            &[("eventSource", format!("endpoint:{endpoint}"))],
        )
        .await
    }

    /// `GET /ari/asterisk/ping`: Asterisk is up and the credentials work.
    pub async fn ping(&self) -> Result<(), AriError> {
        self.empty(Method::GET, &["asterisk", "ping"], &[]).await
    }
}
