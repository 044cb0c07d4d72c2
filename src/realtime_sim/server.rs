//! The fake's listener and WebSocket handshake: where the real service
//! answers with HTTP (401 for the key, 404 for the path, 503 for an outage)
//! and where it accepts the upgrade and then refuses with an `error` event
//! (the beta header, an unknown model).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{conn, ConnRecord, Shared};

/// How long shutdown lets connections close politely before cutting them.
const GRACE: Duration = Duration::from_secs(2);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tasks.spawn(connection(stream, shared.clone(), stop.clone()));
            }
            _ = stop.changed() => break,
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(GRACE, async { while tasks.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// What the handshake learnt from the request.
#[derive(Default)]
struct Upgrade {
    model: String,
    beta: bool,
}

fn http_error((status, body): Refusal) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body.to_string()));
    *resp.status_mut() = status;
    if let Ok(v) = "application/json".parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn openai_error(message: &str, code: Option<&str>) -> serde_json::Value {
    json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": code } })
}

/// Why the upgrade is refused: status and JSON body.
type Refusal = (StatusCode, serde_json::Value);

fn check(shared: &Shared, req: &Request, up: &mut Upgrade) -> Result<(), Refusal> {
    let cfg = &shared.cfg;
    if req.uri().path() != "/v1/realtime" {
        return Err((
            StatusCode::NOT_FOUND,
            openai_error(&format!("Invalid URL (GET {})", req.uri().path()), None),
        ));
    }
    if cfg.refuse_all {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": { "message": "The server is overloaded or not ready yet.", "type": "server_error", "param": null, "code": null } }),
        ));
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.and_then(|a| a.strip_prefix("Bearer ")) {
        None => {
            return Err((
                StatusCode::UNAUTHORIZED,
                openai_error(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    None,
                ),
            ))
        }
        Some(key) if key != cfg.api_key => {
            return Err((
                StatusCode::UNAUTHORIZED,
                openai_error("Incorrect API key provided.", Some("invalid_api_key")),
            ))
        }
        Some(_) => {}
    }
    let query = req.uri().query().unwrap_or_default();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    up.model = pairs
        .into_iter()
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v)
        .unwrap_or_default();
    up.beta = req
        .headers()
        .get_all("openai-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "realtime=v1"));
    Ok(())
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let delay = shared.cfg.handshake_delay;
    if !delay.is_zero() {
        // Sitting on the request is what a slow upstream looks like to the
        // client: TCP is up, the 101 does not come.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
    let mut up = Upgrade::default();
    // The error type is tungstenite's, large or not.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        shared.state().attempts += 1;
        match check(&shared, req, &mut up) {
            Ok(()) => Ok(resp),
            Err(refusal) => {
                shared.state().refused += 1;
                Err(http_error(refusal))
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let id = {
        let mut st = shared.state();
        let id = st.conns.len();
        st.conns.push(ConnRecord {
            id,
            model: up.model.clone(),
            open: true,
            ..ConnRecord::default()
        });
        id
    };
    let cfg = &shared.cfg;
    if up.beta {
        shared.with_conn(id, |c| c.beta_refused = true);
        refuse(
            ws,
            &shared,
            id,
            "beta_api_shape_disabled",
            "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API (without the OpenAI-Beta: realtime=v1 header).",
        )
        .await;
    } else if up.model.is_empty()
        || (!cfg.accept_models.is_empty() && !cfg.accept_models.contains(&up.model))
    {
        let msg = format!(
            "The model '{}' does not exist or you do not have access to it.",
            up.model
        );
        refuse(ws, &shared, id, "model_not_found", &msg).await;
    } else {
        conn::run(ws, shared.clone(), id, up.model, stop).await;
    }
    shared.with_conn(id, |c| c.open = false);
}

/// Sends one error event and closes: the real service accepts these
/// upgrades and refuses in the protocol.
async fn refuse(
    mut ws: WebSocketStream<TcpStream>,
    shared: &Shared,
    id: usize,
    code: &str,
    message: &str,
) {
    let error = json!({ "type": "invalid_request_error", "code": code, "message": message, "param": null, "event_id": null });
    let event = json!({ "type": "error", "event_id": format!("event_c{id}n0"), "error": error });
    shared.with_conn(id, |c| {
        c.sent.push("error".into());
        c.errors.push(error.clone());
    });
    let _ = ws.send(Message::text(event.to_string())).await;
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "".into(),
        }))
        .await;
    // Let the close handshake finish so the client sees the frame.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
