//! The simulator's HTTP side: ARI's REST endpoints and the event
//! WebSocket, with Asterisk's status codes and bodies (`tests/fixtures/ari/LAB.md`).
//! Where no recording shows an answer, the status and message are those
//! of Asterisk 22's `resource_channels.c` (`continue` on a channel out of
//! Stasis: 409).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::call::{self, Call};
use super::dialplan::{route, Callee, Route};
use super::media;
use super::state::{new_channel, now_stamp, BridgePlayback, Chan, Ctl, Request, Target, WsOut};
use super::Shared;
use crate::ari::model::{Bridge, CallerId, DialplanCep};

type Sim = State<Arc<Shared>>;
type Params = Query<Vec<(String, String)>>;

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub(super) fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

/// A listener that can be re-bound to the same port after a restart.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until aborted; aborting drops every connection
/// task with it, which is how a restart cuts keep-alive connections.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let router = router(shared);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // As Asterisk's own HTTP server does (`main/http.c`, every session):
        // Nagle off, so a small event or answer is not held back until the
        // peer acknowledges the previous one (up to its 40 ms delayed ACK).
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        conns.spawn(async move {
            // HTTP/1.1 only, as Asterisk's server: no HTTP/2 code in the binary.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ari/events", get(events))
        .route("/ari/channels", post(originate).get(list_channels))
        .route("/ari/channels/externalMedia", post(external_media))
        .route("/ari/channels/{id}", get(get_channel).delete(hangup))
        .route("/ari/channels/{id}/play", post(play))
        .route("/ari/channels/{id}/answer", post(answer))
        .route("/ari/channels/{id}/continue", post(continue_in_dialplan))
        .route("/ari/channels/{id}/variable", post(set_variable))
        .route("/ari/bridges", post(create_bridge))
        .route("/ari/bridges/{id}", get(get_bridge).delete(destroy_bridge))
        .route("/ari/bridges/{id}/addChannel", post(add_channel))
        .route("/ari/bridges/{id}/play", post(play_bridge))
        .route("/ari/playbacks/{id}", delete(stop_playback))
        .route("/ari/applications", get(applications))
        .route("/ari/applications/{name}", get(application))
        .route(
            "/ari/applications/{name}/subscription",
            post(super::endpoints::subscribe),
        )
        .route(
            "/ari/endpoints/{tech}/{resource}",
            get(super::endpoints::get_endpoint),
        )
        .route("/ari/sounds/{id}", get(sound))
        .route("/ari/asterisk/ping", get(ping))
        .route("/ari/asterisk/info", get(info))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Records the request, checks credentials (Basic or `api_key`), and
/// applies the configured response delay.
async fn guard(State(sim): Sim, req: HttpRequest, next: Next) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    sim.inner().requests.push(Request {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: query.clone(),
        at: std::time::Instant::now(),
    });
    let (user, pass, delay) = {
        let cfg = sim.cfg();
        (
            cfg.username.clone(),
            cfg.password.clone(),
            cfg.response_delay,
        )
    };
    let expected = format!("{user}:{pass}");
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|b| b == expected.as_bytes());
    let api_key = serde_urlencoded::from_str::<Vec<(String, String)>>(&query)
        .ok()
        .is_some_and(|q| param(&q, "api_key") == Some(expected.as_str()));
    if !basic && !api_key {
        return message(StatusCode::UNAUTHORIZED, "Authentication required");
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    next.run(req).await
}

// ---- the event WebSocket ----

async fn events(State(sim): Sim, Query(q): Params, ws: WebSocketUpgrade) -> Response {
    let apps: Vec<String> = param(&q, "app")
        .unwrap_or("")
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if apps.is_empty() {
        return message(StatusCode::BAD_REQUEST, "Missing parameter app");
    }
    // Register before the 101 goes out, so an originate right after the
    // handshake finds its app (Asterisk registers during the upgrade too).
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = {
        let mut inner = sim.inner();
        inner.next_conn += 1;
        let conn = inner.next_conn;
        inner.conns.insert(conn, tx);
        for app in &apps {
            if let Some(old) = inner.apps.insert(app.clone(), conn) {
                let ev = json!({ "type": "ApplicationReplaced", "timestamp": now_stamp(), "application": app, "asterisk_id": sim.asterisk_id });
                if let Some(old_tx) = inner.conns.get(&old) {
                    let _ = old_tx.send(WsOut::Text(ev.to_string()));
                }
            }
        }
        conn
    };
    let sim_failed = sim.clone();
    ws.on_failed_upgrade(move |_| unregister(&sim_failed, conn))
        .on_upgrade(move |socket| pump(sim, conn, socket, rx))
}

fn unregister(sim: &Shared, conn: u64) {
    let mut inner = sim.inner();
    inner.conns.remove(&conn);
    inner.apps.retain(|_, c| *c != conn);
}

async fn pump(
    sim: Arc<Shared>,
    conn: u64,
    socket: WebSocket,
    mut rx: mpsc::UnboundedReceiver<WsOut>,
) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(WsOut::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(WsOut::Close(code)) => {
                    let frame = code.map(|code| CloseFrame {
                        code,
                        reason: "".into(),
                    });
                    let _ = sink.send(Message::Close(frame)).await;
                    break;
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                // Dropping the socket below closes the TCP connection with no frame.
                Some(WsOut::Cut) => break,
            },
            incoming = stream.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    unregister(&sim, conn);
}

// ---- channels ----

fn caller_from(param: Option<&str>) -> CallerId {
    // "Name <number>" or just the number.
    match param {
        Some(s) => match s.split_once('<') {
            Some((name, rest)) => CallerId {
                name: name.trim().trim_matches('"').to_owned(),
                number: rest.trim_end_matches('>').to_owned(),
            },
            None => CallerId {
                name: String::new(),
                number: s.to_owned(),
            },
        },
        None => CallerId::default(),
    }
}

fn allocation_failed() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "Allocation failed" })),
    )
        .into_response()
}

async fn originate(State(sim): Sim, Query(q): Params, _body: Bytes) -> Response {
    let endpoint = param(&q, "endpoint").unwrap_or("");
    let r = route(endpoint);
    let number = r.number().to_owned();
    let (lost, late) = {
        let cfg = sim.cfg();
        (
            cfg.lost_originates.contains(&number),
            cfg.late_originate_answers.get(&number).copied(),
        )
    };
    if lost {
        // Never reached Asterisk: the client can only give up by its own timeout.
        return std::future::pending().await;
    }
    let Some(app) = param(&q, "app").filter(|a| !a.is_empty()) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Application or extension must be specified",
        );
    };
    let tech = endpoint.split('/').next().unwrap_or("");
    if r == Route::Unavailable || sim.cfg().failing_technologies.contains(tech) {
        return allocation_failed();
    }
    let ring_secs = param(&q, "timeout")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(30);
    let ring_timeout = if ring_secs < 0 {
        std::time::Duration::from_secs(86_400 * 365)
    } else {
        sim.scaled(std::time::Duration::from_secs(ring_secs as u64))
    };
    let caller = caller_from(param(&q, "callerId"));
    let callee = {
        let cfg = sim.cfg();
        cfg.callees
            .get(&number)
            .copied()
            .or(cfg.every_callee)
            .unwrap_or_else(|| Callee::for_number(&number))
    };
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (a_json, call) = {
        let mut inner = sim.inner();
        // Checked under the lock that adds the channels, so a shutdown
        // either sees this call or refuses it (fact 14).
        if inner.stopping {
            return allocation_failed();
        }
        let a_id = match param(&q, "channelId") {
            Some(id) if inner.channels.contains_key(id) => {
                return message(
                    StatusCode::CONFLICT,
                    "Channel with given unique ID already exists",
                )
            }
            Some(id) => id.to_owned(),
            None => inner.next_id(),
        };
        let seq = inner.next_seq();
        let (a_name, context, b) = match &r {
            Route::Direct { tech, trunk, .. } => (
                format!("{tech}/{trunk}-{seq:08x}"),
                "default".to_owned(),
                None,
            ),
            _ => {
                let context = endpoint
                    .split_once('@')
                    .map_or("default", |(_, c)| c)
                    .to_owned();
                let b_id = match param(&q, "otherChannelId") {
                    Some(id) => id.to_owned(),
                    None if param(&q, "channelId").is_some() => format!("{a_id};2"),
                    None => inner.next_id(),
                };
                let base = format!("Local/{number}@{context}-{seq:08x}");
                (
                    format!("{base};1"),
                    context,
                    Some((b_id, format!("{base};2"))),
                )
            }
        };
        let home = DialplanCep {
            context: context.clone(),
            exten: number.clone(),
            priority: 1,
            app_name: "AppDial2".into(),
            app_data: "(Outgoing Line)".into(),
        };
        let a = new_channel(a_id.clone(), a_name, "Down", home.clone(), caller.clone());
        let a_json = serde_json::to_value(&a).unwrap_or(Value::Null);
        inner.add_channel(Chan {
            ch: a,
            subscribers: vec![app.to_owned()],
            stasis: None,
            home,
            ctl: Some(ctl_tx.clone()),
            is_call: true,
            via_dialplan: false,
            hopped_into: None,
        });
        let b_id = b.map(|(b_id, b_name)| {
            let cep = DialplanCep {
                context: context.clone(),
                exten: number.clone(),
                priority: 0,
                app_name: String::new(),
                app_data: String::new(),
            };
            // The ;2 half carries the caller id towards the callee.
            let ch = new_channel(b_id.clone(), b_name, "Ring", cep.clone(), caller.clone());
            inner.add_channel(Chan {
                ch,
                subscribers: vec![app.to_owned()],
                stasis: None,
                home: cep,
                ctl: Some(ctl_tx.clone()),
                is_call: false,
                via_dialplan: false,
                hopped_into: None,
            });
            b_id
        });
        (
            a_json,
            Call {
                a: a_id,
                b: b_id,
                app: app.to_owned(),
                route: r,
                callee,
                ring_timeout,
                ctl: ctl_rx,
            },
        )
    };
    // Start the call before answering: as on a real Asterisk, the first
    // events may reach the client before this response does.
    tokio::spawn(call::run(sim.clone(), call));
    tokio::task::yield_now().await;
    if let Some(late) = late {
        tokio::time::sleep(late).await;
    }
    (StatusCode::OK, Json(a_json)).into_response()
}

async fn list_channels(State(sim): Sim) -> Response {
    let inner = sim.inner();
    let mut list: Vec<&crate::ari::model::Channel> =
        inner.channels.values().map(|c| &c.ch).collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Json(json!(list)).into_response()
}

async fn get_channel(State(sim): Sim, Path(id): Path<String>) -> Response {
    match sim.inner().channels.get(&id) {
        Some(c) => Json(json!(c.ch)).into_response(),
        None => message(StatusCode::NOT_FOUND, "Channel not found"),
    }
}

fn reason_cause(reason: Option<&str>) -> i64 {
    match reason.unwrap_or("normal") {
        "busy" => 17,
        "congestion" => 34,
        "no_answer" => 19,
        "timeout" => 18,
        "rejected" => 21,
        "unallocated" => 1,
        "failure" => 38,
        _ => 16,
    }
}

async fn hangup(State(sim): Sim, Path(id): Path<String>, Query(q): Params) -> Response {
    let cause = reason_cause(param(&q, "reason"));
    let ctl = match sim.inner().channels.get(&id) {
        None => return message(StatusCode::NOT_FOUND, "Channel not found"),
        Some(c) => c.ctl.clone(),
    };
    match ctl {
        Some(ctl) => {
            let _ = ctl.send(Ctl::Hangup {
                channel: id.clone(),
                cause,
            });
        }
        // A channel no call task plays (externalMedia): torn down here.
        None => sim.with(|e| {
            let via_dialplan = e.inner.channels.get(&id).is_some_and(|c| c.via_dialplan);
            e.hangup_request(&id, 32, true);
            e.leave_bridges(&id);
            e.stasis_end(&id, via_dialplan);
            e.varset(&id, "STASISSTATUS", "SUCCESS");
            e.destroyed(&id, cause);
        }),
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn play(State(sim): Sim, Path(id): Path<String>, Query(q): Params) -> Response {
    let media: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "media")
        .flat_map(|(_, v)| v.split(','))
        .map(str::to_owned)
        .collect();
    if media.is_empty() {
        return message(StatusCode::BAD_REQUEST, "Missing parameter media");
    }
    let (ctl, lang) = {
        let inner = sim.inner();
        let Some(c) = inner.channels.get(&id) else {
            return message(StatusCode::NOT_FOUND, "Channel not found");
        };
        if c.stasis.is_none() || c.ch.state != "Up" {
            return message(
                StatusCode::PRECONDITION_FAILED,
                "Channel not in Stasis application",
            );
        }
        (
            c.ctl.clone(),
            param(&q, "lang").map_or_else(|| c.ch.language.clone(), str::to_owned),
        )
    };
    let playback_id = param(&q, "playbackId").map_or_else(|| uuid_like(&sim), str::to_owned);
    let body = json!({ "id": playback_id, "media_uri": media[0], "target_uri": format!("channel:{id}"), "language": lang, "state": "queued" });
    let Some(ctl) = ctl else {
        return message(
            StatusCode::PRECONDITION_FAILED,
            "Channel not in Stasis application",
        );
    };
    // Known before PlaybackStarted can reach the client, so it can be stopped at once.
    sim.inner()
        .playbacks
        .insert(playback_id.clone(), id.clone());
    let (ack, acked) = oneshot::channel();
    if ctl
        .send(Ctl::Play {
            channel: id.clone(),
            playback_id: playback_id.clone(),
            media,
            lang,
            ack,
        })
        .is_err()
    {
        sim.inner().playbacks.remove(&playback_id);
        return message(StatusCode::NOT_FOUND, "Channel not found");
    }
    // PlaybackStarted is emitted before this answer, as Asterisk does.
    let _ = acked.await;
    (StatusCode::CREATED, Json(body)).into_response()
}

fn uuid_like(sim: &Shared) -> String {
    let n = sim.inner().next_seq();
    let r: u64 = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        r >> 32,
        (r >> 16) & 0xffff,
        n & 0xfff,
        r & 0xfff,
        n
    )
}

/// `POST /channels/{id}/continue` (fact 16): 204; the channel leaves
/// Stasis for the dialplan (`StasisEnd` can come before the 204), after
/// the playbacks queued before it. Defaults as Asterisk's: no context
/// keeps the channel's context and extension; a context alone goes to its
/// `s`; no priority is 1, or the next priority when neither context nor
/// extension is given.
async fn continue_in_dialplan(
    State(sim): Sim,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    let not_in_stasis = || message(StatusCode::CONFLICT, "Channel not in Stasis application");
    let (ctl, target) = {
        let inner = sim.inner();
        let Some(c) = inner.channels.get(&id) else {
            return message(StatusCode::NOT_FOUND, "Channel not found");
        };
        if c.stasis.is_none() {
            return not_in_stasis();
        }
        let given = |k: &str| param(&q, k).filter(|v| !v.is_empty());
        let (context, exten) = (given("context"), given("extension"));
        // Asterisk reads a priority that is no number as none.
        let priority = given("priority")
            .and_then(|p| p.parse::<i64>().ok())
            .filter(|p| *p != 0);
        let here = &c.ch.dialplan;
        let target = Target {
            context: context.unwrap_or(&here.context).to_owned(),
            exten: match (exten, context) {
                (Some(x), _) => x.to_owned(),
                (None, Some(_)) => "s".to_owned(),
                (None, None) => here.exten.clone(),
            },
            priority: match (priority, context, exten) {
                (Some(p), _, _) => p,
                (None, None, None) => here.priority + 1,
                _ => 1,
            },
        };
        (c.ctl.clone(), target)
    };
    match ctl {
        Some(ctl) => {
            let (ack, acked) = oneshot::channel();
            let sent = ctl.send(Ctl::Continue {
                channel: id.clone(),
                target,
                ack,
            });
            if sent.is_err() || acked.await.is_err() {
                // The call ended or left Stasis meanwhile.
                return if sim.inner().channels.contains_key(&id) {
                    not_in_stasis()
                } else {
                    message(StatusCode::NOT_FOUND, "Channel not found")
                };
            }
        }
        // A channel no call task plays (externalMedia) leaves here.
        None => {
            let amd = sim.amd_verdict("", None);
            let continued = call::leave_for(&sim, &id, target, &amd, false);
            tokio::spawn(call::lone_continued(sim.clone(), continued));
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn answer(State(sim): Sim, Path(id): Path<String>) -> Response {
    let up = match sim.inner().channels.get(&id) {
        None => return message(StatusCode::NOT_FOUND, "Channel not found"),
        Some(c) if c.stasis.is_none() => {
            return message(
                StatusCode::PRECONDITION_FAILED,
                "Channel not in Stasis application",
            )
        }
        Some(c) => c.ch.state == "Up",
    };
    if !up {
        sim.with(|e| e.state(&id, "Up"));
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn set_variable(State(sim): Sim, Path(id): Path<String>, Query(q): Params) -> Response {
    let Some(var) = param(&q, "variable") else {
        return message(StatusCode::BAD_REQUEST, "Variable name is required");
    };
    if !sim.inner().channels.contains_key(&id) {
        return message(StatusCode::NOT_FOUND, "Channel not found");
    }
    let value = param(&q, "value").unwrap_or("");
    if var == "CHANNEL(language)" {
        if let Some(c) = sim.inner().channels.get_mut(&id) {
            c.ch.language = value.to_owned();
        }
    }
    sim.with(|e| e.varset(&id, var, value));
    StatusCode::NO_CONTENT.into_response()
}

async fn external_media(State(sim): Sim, Query(q): Params) -> Response {
    let (Some(app), Some(host)) = (param(&q, "app"), param(&q, "external_host")) else {
        return message(
            StatusCode::BAD_REQUEST,
            "app and external_host are required",
        );
    };
    let format = param(&q, "format").unwrap_or("ulaw");
    let args: Vec<String> = param(&q, "data")
        .map(|d| vec![d.to_owned()])
        .unwrap_or_default();
    // chan_rtp takes a numeric address only; its failure is the originate's.
    let Ok(remote) = host.parse::<SocketAddr>() else {
        return allocation_failed();
    };
    let Ok(stream) = media::bind(remote).await else {
        return allocation_failed();
    };
    let local = stream.local;
    let id = {
        let mut inner = sim.inner();
        // Asterisk makes this channel through its originate code: refused alike.
        if inner.stopping {
            return allocation_failed();
        }
        let id = match param(&q, "channelId") {
            Some(id) if inner.channels.contains_key(id) => {
                return message(
                    StatusCode::CONFLICT,
                    "Channel with given unique ID already exists",
                )
            }
            Some(id) => id.to_owned(),
            None => inner.next_id(),
        };
        let seq = inner.next_seq();
        let home = DialplanCep {
            context: "default".into(),
            exten: "s".into(),
            priority: 1,
            app_name: "AppDial2".into(),
            app_data: "(Outgoing Line)".into(),
        };
        let mut ch = new_channel(
            id.clone(),
            format!("UnicastRTP/{host}-0x7effe80{seq:05x}"),
            "Down",
            home.clone(),
            CallerId::default(),
        );
        // Where the daemon sends audio back (fact 12): the real socket.
        ch.channelvars = Some(
            [
                (
                    "UNICASTRTP_LOCAL_ADDRESS".to_owned(),
                    local.ip().to_string(),
                ),
                ("UNICASTRTP_LOCAL_PORT".to_owned(), local.port().to_string()),
            ]
            .into(),
        );
        inner.add_channel(Chan {
            ch,
            subscribers: vec![app.to_owned()],
            stasis: None,
            home,
            ctl: None,
            is_call: false,
            via_dialplan: false,
            hopped_into: None,
        });
        media::attach(&sim, &mut inner, &id, stream);
        id
    };
    let dialstring = format!("{host}/c({format})");
    let snap = sim.with(|e| {
        e.dial(&id, "", &dialstring);
        e.state(&id, "Up");
        e.dial(&id, "ANSWER", &dialstring);
        // `Stasis(app,data)` already runs as STASISSTATUS is cleared.
        if let Some(c) = e.inner.channels.get_mut(&id) {
            c.ch.dialplan.app_name = "Stasis".into();
            c.ch.dialplan.app_data = std::iter::once(app.to_owned())
                .chain(args.iter().cloned())
                .collect::<Vec<_>>()
                .join(",");
        }
        e.varset(&id, "STASISSTATUS", "");
        e.stasis_start(&id, app, &args);
        e.inner.channels.get(&id).map(|c| json!(c.ch))
    });
    (StatusCode::OK, Json(snap.unwrap_or(Value::Null))).into_response()
}

// ---- bridges ----

async fn create_bridge(State(sim): Sim, Query(q): Params) -> Response {
    let id = param(&q, "bridgeId").map_or_else(|| uuid_like(&sim), str::to_owned);
    let bridge = Bridge {
        id: id.clone(),
        technology: "simple_bridge".into(),
        bridge_type: param(&q, "type").unwrap_or("mixing").to_owned(),
        bridge_class: "stasis".into(),
        creator: "Stasis".into(),
        name: param(&q, "name").unwrap_or("").to_owned(),
        channels: Vec::new(),
        creationtime: now_stamp(),
        video_mode: "talker".into(),
    };
    sim.inner().bridges.insert(id, bridge.clone());
    (StatusCode::OK, Json(bridge)).into_response()
}

async fn add_channel(State(sim): Sim, Path(id): Path<String>, Query(q): Params) -> Response {
    let Some(channel) = param(&q, "channel").map(str::to_owned) else {
        return message(StatusCode::BAD_REQUEST, "Missing parameter channel");
    };
    // Checked and done under one lock; the error is the status and message to send.
    let result: Result<(), (StatusCode, &str)> = sim.with(|e| {
        let Some(app) = e.inner.channels.get(&channel).map(|c| c.stasis.clone()) else {
            return Err((StatusCode::BAD_REQUEST, "Channel not found"));
        };
        let Some(app) = app else {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "Channel not in Stasis application",
            ));
        };
        let Some(bridge) = e.inner.bridges.get_mut(&id) else {
            return Err((StatusCode::NOT_FOUND, "Bridge not found"));
        };
        if !bridge.channels.contains(&channel) {
            bridge.channels.push(channel.clone());
        }
        let snapshot = bridge.clone();
        let apps = e.inner.bridge_apps.entry(id.clone()).or_default();
        if !apps.contains(&app) {
            apps.push(app.clone());
        }
        e.bridge_event("ChannelEnteredBridge", &snapshot, Some(&channel), &app);
        e.bridge_peers(&snapshot, None);
        e.bridge_connected_lines(&snapshot, &channel);
        Ok(())
    });
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err((status, text)) => message(status, text),
    }
}

/// Plays into a bridge through an announcer channel, which every member
/// sees in its `BRIDGEPEER` while the playback lasts (recording `externalmedia`).
async fn play_bridge(State(sim): Sim, Path(id): Path<String>, Query(q): Params) -> Response {
    let media: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "media")
        .flat_map(|(_, v)| v.split(','))
        .map(str::to_owned)
        .collect();
    let Some(first) = media.first().cloned() else {
        return message(StatusCode::BAD_REQUEST, "Missing parameter media");
    };
    let lang = param(&q, "lang").unwrap_or("en").to_owned();
    let playback_id = param(&q, "playbackId").map_or_else(|| uuid_like(&sim), str::to_owned);
    let playback = json!({ "id": playback_id, "media_uri": first, "target_uri": format!("bridge:{id}"), "language": lang, "state": "playing" });
    let announcer = {
        let mut inner = sim.inner();
        if !inner.bridges.contains_key(&id) {
            return message(StatusCode::NOT_FOUND, "Bridge not found");
        }
        format!("Announcer/ARI-{:08x};2", inner.next_seq())
    };
    sim.with(|e| {
        let bridge = e.inner.bridges.get(&id).cloned().unwrap_or_default();
        e.bridge_peers(&bridge, Some(&announcer));
        let apps = e.inner.bridge_apps.get(&id).cloned().unwrap_or_default();
        for app in &apps {
            e.inner.emit_app(app, json!({ "type": "PlaybackStarted", "timestamp": now_stamp(), "playback": playback }), e.asterisk_id);
        }
        e.inner.bridge_playbacks.insert(
            playback_id.clone(),
            BridgePlayback {
                playback: playback.clone(),
                apps,
            },
        );
    });
    let (ok, until) = sim.media_length(&first, &lang);
    let sim2 = sim.clone();
    let id2 = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(until).await;
        sim2.with(|e| {
            // Gone when a shutdown already ended it.
            let Some(mut bp) = e.inner.bridge_playbacks.remove(&playback_id) else {
                return;
            };
            bp.playback["state"] = json!(if ok { "done" } else { "failed" });
            for app in &bp.apps {
                e.inner.emit_app(app, json!({ "type": "PlaybackFinished", "timestamp": now_stamp(), "playback": bp.playback }), e.asterisk_id);
            }
            if let Some(bridge) = e.inner.bridges.get(&id2).cloned() {
                e.bridge_peers(&bridge, None);
            }
        });
    });
    let mut body = playback;
    body["state"] = json!("queued");
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `DELETE /ari/playbacks/{id}`: 204, then `PlaybackFinished` `done`
/// (fact 15), for a channel's playback as for a bridge's.
async fn stop_playback(State(sim): Sim, Path(id): Path<String>) -> Response {
    let ctl = {
        let inner = sim.inner();
        inner
            .playbacks
            .get(&id)
            .and_then(|ch| inner.channels.get(ch))
            .and_then(|c| c.ctl.clone())
    };
    if let Some(ctl) = ctl {
        let (ack, acked) = oneshot::channel();
        let sent = ctl.send(Ctl::StopPlayback {
            playback_id: id.clone(),
            ack,
        });
        if sent.is_ok() && acked.await == Ok(true) {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
    let stopped = sim.with(|e| {
        let Some(mut bp) = e.inner.bridge_playbacks.remove(&id) else {
            return false;
        };
        bp.playback["state"] = json!("done");
        for app in &bp.apps {
            e.inner.emit_app(app, json!({ "type": "PlaybackFinished", "timestamp": now_stamp(), "playback": bp.playback }), e.asterisk_id);
        }
        let bridge = bp.playback["target_uri"]
            .as_str()
            .and_then(|t| t.strip_prefix("bridge:"))
            .and_then(|b| e.inner.bridges.get(b).cloned());
        if let Some(bridge) = bridge {
            e.bridge_peers(&bridge, None);
        }
        true
    });
    if stopped {
        StatusCode::NO_CONTENT.into_response()
    } else {
        message(StatusCode::NOT_FOUND, "Playback not found")
    }
}

/// `GET /bridges/{id}`: fact 19 reads what is left in the bridge this way.
async fn get_bridge(State(sim): Sim, Path(id): Path<String>) -> Response {
    match sim.inner().bridges.get(&id) {
        Some(b) => Json(json!(b)).into_response(),
        None => message(StatusCode::NOT_FOUND, "Bridge not found"),
    }
}

async fn destroy_bridge(State(sim): Sim, Path(id): Path<String>) -> Response {
    if sim.with(|e| e.destroy_bridge(&id)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        message(StatusCode::NOT_FOUND, "Bridge not found")
    }
}

// ---- applications, sounds, ping, info ----

fn app_json(inner: &super::state::Inner, name: &str) -> Value {
    let mut ids: Vec<&String> = inner
        .channels
        .iter()
        .filter(|(_, c)| c.subscribers.iter().any(|s| s == name))
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    json!({ "name": name, "channel_ids": ids, "bridge_ids": [], "endpoint_ids": [], "device_names": [], "events_allowed": [], "events_disallowed": [] })
}

async fn applications(State(sim): Sim) -> Response {
    let inner = sim.inner();
    let mut names: Vec<&String> = inner.apps.keys().collect();
    names.sort();
    Json(Value::Array(
        names.into_iter().map(|n| app_json(&inner, n)).collect(),
    ))
    .into_response()
}

async fn application(State(sim): Sim, Path(name): Path<String>) -> Response {
    let inner = sim.inner();
    if !inner.apps.contains_key(&name) {
        return message(StatusCode::NOT_FOUND, "Application not found");
    }
    Json(app_json(&inner, &name)).into_response()
}

async fn sound(State(sim): Sim, Path(id): Path<String>) -> Response {
    match sim.cfg().sounds.get(&id) {
        Some(s) => {
            let formats: Vec<Value> = s
                .languages
                .iter()
                .map(|l| json!({ "language": l, "format": "gsm" }))
                .collect();
            Json(json!({ "id": id, "text": "", "formats": formats })).into_response()
        }
        None => message(StatusCode::NOT_FOUND, "Sound not found"),
    }
}

async fn ping(State(sim): Sim, _headers: HeaderMap) -> Response {
    Json(json!({ "asterisk_id": sim.asterisk_id, "ping": "pong", "timestamp": now_stamp() }))
        .into_response()
}

/// `GET /ari/asterisk/info` in real Asterisk's shape. `status.startup_time`
/// is new after every restart: the only way a client can tell that
/// Asterisk itself restarted rather than the network blinking.
async fn info(State(sim): Sim, Query(q): Params) -> Response {
    let startup = sim.startup_stamp();
    let mut all = serde_json::Map::new();
    all.insert(
        "build".into(),
        json!({
            "os": "Linux",
            "kernel": "6.8.0-57-generic",
            "options": "BUILD_NATIVE, OPTIONAL_API",
            "machine": "x86_64",
            "date": "2026-01-05 14:03:11 UTC",
            "user": "root",
        }),
    );
    all.insert(
        "system".into(),
        json!({ "version": "22.10.1", "entity_id": sim.asterisk_id }),
    );
    all.insert(
        "config".into(),
        json!({
            "name": "",
            "default_language": "en",
            "setid": { "user": "", "group": "" },
        }),
    );
    all.insert(
        "status".into(),
        json!({ "startup_time": startup, "last_reload_time": startup }),
    );
    // `?only=status,system` as Asterisk allows.
    let only: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "only")
        .flat_map(|(_, v)| v.split(','))
        .collect();
    if !only.is_empty() {
        all.retain(|k, _| only.contains(&k.as_str()));
    }
    Json(Value::Object(all)).into_response()
}

/// A caller dialling the inbound number over a SIP trunk: answered in
/// `from-voip`, then `Stasis(<inbound app>)` (recording `inbound`, fact 11).
pub fn inbound_call(sim: &Arc<Shared>, caller_number: &str) -> Option<String> {
    inbound(sim, caller_number, false)
}

/// The inbound number reached through a Local channel that the PBX's own
/// dialplan dialled (a ring group, follow-me): the `;2` half enters
/// `Stasis(<inbound app>)` as in recording `inbound`; the `;1` half is in
/// no app and no app hears of it.
pub fn inbound_local_call(sim: &Arc<Shared>, caller_number: &str) -> Option<String> {
    inbound(sim, caller_number, true)
}

fn inbound(sim: &Arc<Shared>, caller_number: &str, local: bool) -> Option<String> {
    let (app, ulaw) = {
        let cfg = sim.cfg();
        (cfg.inbound_app.clone(), cfg.inbound_sets_ulaw)
    };
    let number = super::dialplan::AGENT_NUMBER;
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let (id, pair) = sim.with(|e| {
        if e.inner.stopping {
            return None; // a stopping Asterisk takes no new call
        }
        let uid = e.inner.next_id();
        let seq = e.inner.next_seq();
        let caller = CallerId {
            name: String::new(),
            number: caller_number.to_owned(),
        };
        let in_stasis = DialplanCep {
            context: "from-voip".into(),
            exten: number.into(),
            // After `Answer()`, and the two `Set()`s of the later lab.
            priority: if ulaw { 4 } else { 2 },
            app_name: "Stasis".into(),
            app_data: app.clone(),
        };
        let (id, name, pair) = if local {
            // An id given by whoever originated the pair (AMI or ARI with a
            // channel id): the `;2` half is then `<id>;2`.
            let base = format!("Local/{number}@from-voip-{seq:08x}");
            let dialled = DialplanCep {
                context: "from-voip".into(),
                exten: number.into(),
                priority: 1,
                app_name: "AppDial".into(),
                app_data: "(Outgoing Line)".into(),
            };
            let one = new_channel(
                uid.clone(),
                format!("{base};1"),
                "Up",
                dialled.clone(),
                caller.clone(),
            );
            e.inner.add_channel(Chan {
                ch: one,
                subscribers: Vec::new(),
                stasis: None,
                home: dialled,
                ctl: Some(ctl.clone()),
                is_call: false,
                via_dialplan: false,
                hopped_into: None,
            });
            (format!("{uid};2"), format!("{base};2"), Some(uid))
        } else {
            (uid, format!("PJSIP/voip_issabel-{seq:08x}"), None)
        };
        let ch = new_channel(id.clone(), name, "Up", in_stasis.clone(), caller);
        e.inner.add_channel(Chan {
            ch,
            subscribers: Vec::new(),
            stasis: None,
            home: in_stasis,
            ctl: Some(ctl),
            is_call: false,
            via_dialplan: true,
            hopped_into: None,
        });
        if e.stasis_start(&id, &app, &[]) {
            e.subscribe(&id, &app);
            Some((id, pair))
        } else {
            // Stasis() failed: the caller hears nothing and is hung up, unseen.
            e.inner.remove_channel(&id);
            if let Some(one) = &pair {
                e.inner.remove_channel(one);
            }
            None
        }
    })?;
    let task = call::Inbound {
        id: id.clone(),
        pair,
        ctl: ctl_rx,
    };
    tokio::spawn(call::inbound(sim.clone(), task));
    Some(id)
}
